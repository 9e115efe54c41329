-- The migration guide's schema.sql (Option 1, Step 4), table for table,
-- column for column, with IF NOT EXISTS so that applying it again is a no-op.
-- Users table
CREATE TABLE IF NOT EXISTS users (
  id VARCHAR(255) PRIMARY KEY,
  email VARCHAR(255) UNIQUE NOT NULL,
  name VARCHAR(255) NOT NULL,
  password VARCHAR(255) NOT NULL,
  role VARCHAR(50) DEFAULT 'user',
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_users_email ON users(email);

-- Datasets table
CREATE TABLE IF NOT EXISTS datasets (
  id VARCHAR(255) PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  filename VARCHAR(255) NOT NULL,
  path TEXT NOT NULL,
  size BIGINT NOT NULL,
  type VARCHAR(50) NOT NULL,
  uploaded_by VARCHAR(255) REFERENCES users(id),
  uploaded_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  deleted_at TIMESTAMP NULL
);

CREATE INDEX IF NOT EXISTS idx_datasets_uploaded_by ON datasets(uploaded_by);
CREATE INDEX IF NOT EXISTS idx_datasets_uploaded_at ON datasets(uploaded_at);

-- Training jobs table
CREATE TABLE IF NOT EXISTS training_jobs (
  id VARCHAR(255) PRIMARY KEY,
  job_id VARCHAR(255) UNIQUE NOT NULL,
  user_id VARCHAR(255) REFERENCES users(id),
  dataset_id VARCHAR(255) REFERENCES datasets(id),
  status VARCHAR(50) NOT NULL,
  progress DECIMAL(5,2) DEFAULT 0,
  epoch INTEGER,
  step INTEGER,
  total_steps INTEGER,
  loss DECIMAL(10,6),
  message TEXT,
  params JSONB,
  pid INTEGER,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  completed_at TIMESTAMP NULL
);

CREATE INDEX IF NOT EXISTS idx_jobs_user_id ON training_jobs(user_id);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON training_jobs(status);
CREATE INDEX IF NOT EXISTS idx_jobs_created_at ON training_jobs(created_at);

-- Audit log table
CREATE TABLE IF NOT EXISTS audit_log (
  id SERIAL PRIMARY KEY,
  user_id VARCHAR(255) REFERENCES users(id),
  action VARCHAR(100) NOT NULL,
  resource_type VARCHAR(50),
  resource_id VARCHAR(255),
  details JSONB,
  ip_address VARCHAR(45),
  user_agent TEXT,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_audit_user_id ON audit_log(user_id);
CREATE INDEX IF NOT EXISTS idx_audit_created_at ON audit_log(created_at);

-- docmirror's own tables, beside the guide's (whose columns it never adds to).

-- One row per row docmirror wrote into a guide table: the file it came from
-- (and the record's position in it, for export's order), the content hash, the record's own field names, the record's fields that
-- have no column in the guide's table (so nothing in the files is lost),
-- when it was written, and for sync's next run, a 128-bit hash of the
-- record's text under the mapping rules (`raw`; never for a record with a
-- plaintext password) with its unique values (`uniq`: a JSON list of field,
-- value, ...; NULL for none), kept as text: nothing reads it but docmirror.
CREATE TABLE IF NOT EXISTS docmirror_rows (
  tbl TEXT NOT NULL,
  id VARCHAR(255) NOT NULL,
  source TEXT NOT NULL,
  position BIGINT,
  hash TEXT NOT NULL,
  fields JSONB NOT NULL,
  extras JSONB NOT NULL DEFAULT '{}',
  written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  raw BYTEA,
  uniq TEXT,
  PRIMARY KEY (tbl, id)
);
-- Tables made by docmirror before 0.x had no texts.
ALTER TABLE docmirror_rows ADD COLUMN IF NOT EXISTS raw BYTEA, ADD COLUMN IF NOT EXISTS uniq TEXT;

CREATE INDEX IF NOT EXISTS docmirror_rows_source ON docmirror_rows (tbl, source);

-- Records and files that cannot be mirrored, with their reasons.
CREATE TABLE IF NOT EXISTS mirror_rejects (
  key TEXT PRIMARY KEY,
  collection TEXT NOT NULL,
  source TEXT NOT NULL,
  position BIGINT,
  record_id TEXT,
  reason_code TEXT NOT NULL,
  reason TEXT NOT NULL,
  clashes_with_id TEXT,
  record JSONB,
  first_seen TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS mirror_rejects_collection ON mirror_rejects (collection, source);

-- The last version of rows whose records left the files (--on-delete archive).
CREATE TABLE IF NOT EXISTS mirror_archive (
  tbl TEXT NOT NULL,
  id TEXT NOT NULL,
  hash TEXT NOT NULL,
  deleted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  row_data JSONB NOT NULL,
  extras JSONB,
  PRIMARY KEY (tbl, id, hash)
);

-- What the mirror records about itself (docmirror status): one document.
CREATE TABLE IF NOT EXISTS mirror_state (
  id TEXT PRIMARY KEY,
  state JSONB NOT NULL
);
