"""Query parameters shared by many routes, with bounds both stores can hold.

SQLite integers and PostgreSQL ``bigint`` stop at 2**63 - 1 and event seqs are 32-bit
``integer`` columns: an unbounded ``int`` from the query string reaches the database and
comes back as a 500 (``OverflowError``, ``NumericValueOutOfRange``). Bounding every integer
here makes such input a 422 before any query runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_INT32 = 2**31 - 1
# PostgreSQL text cannot hold U+0000 (``%00`` in a URL): refused as a 422 here, not by the
# database as a 500. Every string a route hands to the store carries this pattern.
NO_NUL = r"^[^\x00]*$"

Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT32, description="Runs to skip (newest first).")]
AfterSeq = Annotated[int, Query(ge=0, le=MAX_INT32, description="Replay events after this seq.")]

RunId = Annotated[str, Path(max_length=64, pattern=NO_NUL)]
Name = Annotated[str | None, Query(max_length=255, pattern=NO_NUL)]
