-- The DDL create_all ran at commit 02bc257 (before migrations), compiled from that
-- commit's core/store/models.py. Test data: stores in the wild were made by exactly this.

CREATE TABLE run (
	component VARCHAR(64) NOT NULL, 
	kind VARCHAR(64) NOT NULL, 
	model VARCHAR(255), 
	params JSONB NOT NULL, 
	id VARCHAR(32) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	progress FLOAT NOT NULL, 
	message VARCHAR, 
	owner VARCHAR(64), 
	result JSONB, 
	error JSONB, 
	attempts INTEGER NOT NULL, 
	last_seq INTEGER NOT NULL, 
	cancel_requested BOOLEAN NOT NULL, 
	worker_id VARCHAR(64), 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	started_at TIMESTAMP WITH TIME ZONE, 
	finished_at TIMESTAMP WITH TIME ZONE, 
	heartbeat_at TIMESTAMP WITH TIME ZONE, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_run_component ON run (component);

CREATE INDEX ix_run_component_status_created ON run (component, status, created_at);

CREATE INDEX ix_run_created_at ON run (created_at);

CREATE INDEX ix_run_model ON run (model);

CREATE INDEX ix_run_owner ON run (owner);

CREATE INDEX ix_run_status ON run (status);

CREATE TABLE idempotency_key (
	owner VARCHAR(64) NOT NULL, 
	component VARCHAR(64) NOT NULL, 
	key VARCHAR(255) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	run_id VARCHAR(32), 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (owner, component, key), 
	FOREIGN KEY(run_id) REFERENCES run (id) ON DELETE CASCADE
);

CREATE TABLE run_event (
	run_id VARCHAR(32) NOT NULL, 
	seq INTEGER NOT NULL, 
	type VARCHAR(32) NOT NULL, 
	ts TIMESTAMP WITH TIME ZONE NOT NULL, 
	data JSONB NOT NULL, 
	PRIMARY KEY (run_id, seq), 
	FOREIGN KEY(run_id) REFERENCES run (id) ON DELETE CASCADE
);
