#!/usr/bin/env node
// The migration guide's own PostgreSQL script (Option 1, Step 8,
// `migrate-to-postgres.ts`), as written, in plain JavaScript with `pg`:
// read each file, then one awaited `INSERT ... ON CONFLICT DO NOTHING` per
// record, in sequence, errors only printed. Its schema is applied first
// (`schema.sql`, Step 4), as the guide does before migrating.
//
//   node guide_pg.js DATA_DIR ARTIFACTS_DIR DATABASE_URL SCHEMA_SQL
//
// Two changes, both in its favour: it logs one line per 1,000 records rather
// than per record, and it applies the guide's schema with IF NOT EXISTS so a
// second run can be timed.

'use strict';

const fs = require('fs');
const path = require('path');
const { Client } = require('pg');

async function main() {
  const [dataDir, artifactsDir, url, schemaPath] = process.argv.slice(2);
  const client = new Client({ connectionString: url });
  await client.connect();
  const query = (text, params) => client.query(text, params);
  const schema = fs.readFileSync(schemaPath, 'utf-8')
    .replace(/CREATE TABLE /g, 'CREATE TABLE IF NOT EXISTS ')
    .replace(/CREATE INDEX /g, 'CREATE INDEX IF NOT EXISTS ');
  await query(schema);
  let n = 0;
  const tick = () => { if (++n % 1000 === 0) console.log(`migrated ${n}`); };

  const users = JSON.parse(fs.readFileSync(path.join(dataDir, 'users.json'), 'utf-8'));
  for (const user of users) {
    try {
      await query(
        `INSERT INTO users (id, email, name, password, role, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO NOTHING`,
        [user.id, user.email, user.name, user.password, user.role, user.createdAt, user.updatedAt]
      );
      tick();
    } catch (error) {
      console.error(`Failed to migrate user ${user.email}:`, error.message);
    }
  }

  const datasets = JSON.parse(fs.readFileSync(path.join(dataDir, 'datasets', 'metadata.json'), 'utf-8'));
  for (const dataset of datasets) {
    try {
      await query(
        `INSERT INTO datasets (id, name, filename, path, size, type, uploaded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO NOTHING`,
        [dataset.id, dataset.name, dataset.filename, dataset.path, dataset.size, dataset.type, dataset.uploaded_at]
      );
      tick();
    } catch (error) {
      console.error(`Failed to migrate dataset ${dataset.name}:`, error.message);
    }
  }

  const jobsDir = path.join(artifactsDir, 'jobs');
  for (const file of fs.readdirSync(jobsDir)) {
    if (!file.endsWith('.json')) continue;
    try {
      const job = JSON.parse(fs.readFileSync(path.join(jobsDir, file), 'utf-8'));
      await query(
        `INSERT INTO training_jobs (
          id, job_id, status, progress, epoch, step, total_steps, loss,
          message, params, pid, created_at, updated_at
        ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        ON CONFLICT (job_id) DO NOTHING`,
        [
          job.job_id, job.job_id, job.status, job.progress || 0, job.epoch, job.step, job.total_steps,
          job.loss, job.message, JSON.stringify(job.params || {}), job.pid,
          job.created_at || new Date().toISOString(), job.updated_at || new Date().toISOString(),
        ]
      );
      tick();
    } catch (error) {
      console.error(`Failed to migrate job ${file}:`, error.message);
    }
  }
  await client.end();
}

main().catch((error) => {
  console.error('Migration failed:', error.message);
  process.exit(1);
});
