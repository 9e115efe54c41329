#!/usr/bin/env node
// Seed-style contender: what the platform's migration guide does (its
// "Migrate Existing Data" script), ported to MongoDB with the official driver:
// read each file, then one awaited upsert per record, in sequence.
//
//   node seed.js DATA_DIR ARTIFACTS_DIR MONGODB_URI
//
// Each record becomes updateOne({_id}, {$set: doc}, {upsert: true}), with the
// conversions the mirror's rules ask for: dates as Date, email lower-cased and
// trimmed, dataset size as Int64, and the fields the platform writes as
// floats wrapped in Double (JSON.parse cannot tell 100.0 from 100, and the
// driver would store a whole number as Int32). The same indexes as the
// platform's schema are created first.

'use strict';

const fs = require('fs');
const path = require('path');
const { MongoClient, Long, Double } = require('mongodb');

const USER_DATES = ['createdAt', 'updatedAt'];
const DATASET_DATES = ['uploaded_at', 'deleted_at'];
const JOB_DATES = ['created_at', 'updated_at', 'completed_at'];

function toDate(v) {
  return v === null || v === undefined ? v : new Date(v);
}

function toDouble(v) {
  return typeof v === 'number' ? new Double(v) : v;
}

function withDates(rec, fields) {
  const doc = { ...rec };
  for (const f of fields) if (f in doc) doc[f] = toDate(doc[f]);
  return doc;
}

function userDoc(u) {
  const doc = withDates(u, USER_DATES);
  if (typeof doc.email === 'string') doc.email = doc.email.toLowerCase().trim();
  return doc;
}

function datasetDoc(d) {
  const doc = withDates(d, DATASET_DATES);
  if (typeof doc.size === 'number') doc.size = Long.fromNumber(doc.size);
  return doc;
}

function jobDoc(j) {
  const doc = withDates(j, JOB_DATES);
  doc.progress = toDouble(doc.progress);
  doc.loss = toDouble(doc.loss);
  if (doc.params && typeof doc.params === 'object') {
    doc.params = { ...doc.params, learning_rate: toDouble(doc.params.learning_rate) };
  }
  return doc;
}

async function upsertAll(coll, records, idField, toDoc) {
  let n = 0;
  for (const rec of records) {
    const doc = toDoc(rec);
    await coll.updateOne({ _id: rec[idField] }, { $set: doc }, { upsert: true });
    n += 1;
  }
  return n;
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf-8'));
}

async function main() {
  const [dataDir, artifactsDir, uri] = process.argv.slice(2);
  if (!uri) {
    console.error('usage: node seed.js DATA_DIR ARTIFACTS_DIR MONGODB_URI');
    process.exit(2);
  }
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10000 });
  await client.connect();
  const db = client.db();
  try {
    await db.collection('users').createIndex({ email: 1 }, { unique: true, name: 'email_unique' });
    await db.collection('datasets').createIndex({ uploaded_by: 1 });
    await db.collection('datasets').createIndex({ uploaded_at: 1 });
    await db.collection('training_jobs').createIndex({ user_id: 1 });
    await db.collection('training_jobs').createIndex({ status: 1 });
    await db.collection('training_jobs').createIndex({ created_at: 1 });

    const users = readJson(path.join(dataDir, 'users.json'));
    const nu = await upsertAll(db.collection('users'), users, 'id', userDoc);
    const datasets = readJson(path.join(dataDir, 'datasets', 'metadata.json'));
    const nd = await upsertAll(db.collection('datasets'), datasets, 'id', datasetDoc);
    const jobsDir = path.join(artifactsDir, 'jobs');
    let nj = 0;
    const jobs = db.collection('training_jobs');
    for (const file of fs.readdirSync(jobsDir)) {
      if (!file.endsWith('.json')) continue;
      nj += await upsertAll(jobs, [readJson(path.join(jobsDir, file))], 'job_id', jobDoc);
    }
    console.log(`seed: upserted users ${nu}, datasets ${nd}, training_jobs ${nj}`);
  } finally {
    await client.close();
  }
}

main().catch((err) => {
  console.error('seed failed:', err);
  process.exit(1);
});
