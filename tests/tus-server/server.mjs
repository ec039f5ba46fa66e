// The official tus server (@tus/server + @tus/file-store) on loopback, for
// dockd's tests, with the small companion a dockd tus store needs beside it.
//
// The contract dockd's TusStore relies on (see dockd/store/tus.py):
//
// * Deterministic upload URLs. The upload id is the hex SHA-256 of the object
//   key sent in the `dockd-key` Upload-Metadata entry (namingFunction), so the
//   same key always lives at `<base><sha256(key)>`. A retry can never make a
//   second copy, and a lost checkpoint still finds its upload with HEAD.
// * Read-back: GET <base><id> serves a finished upload. @tus/server has a GET
//   handler, but on Node 20 it wraps the file stream in a web Response whose
//   stream undici closes twice, which kills the process (ERR_INVALID_STATE);
//   so the companion streams finished uploads itself, with the same rules
//   (404 unless offset == size).
// * Listing: GET <base>?prefix=P answers a JSON array of
//   {id, key, size, offset, metadata}, built from the file store's `.json`
//   info files (offset is the data file's size on disk).
// * Optional bearer token: every request must carry `Authorization: Bearer T`
//   when TUS_TOKEN_FILE is set (401 otherwise).
// * Optional checksum extension (TUS_CHECKSUM=1): OPTIONS advertises
//   `checksum` and `Tus-Checksum-Algorithm: sha1`; a PATCH carrying
//   `Upload-Checksum: sha1 <b64>` is buffered, checked, and either passed to
//   @tus/server or refused with 460 (nothing written), as the spec asks.
//   @tus/server does not implement this extension itself.
//
// Environment: TUS_PORT (0 = pick one), TUS_DIR, TUS_TOKEN_FILE, TUS_CHECKSUM,
// TUS_MAX_SIZE, TUS_LOG (JSON lines, one per request). Prints
// `listening <port>` on stdout once it accepts connections.

import crypto from 'node:crypto';
import fs from 'node:fs';
import fsProm from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';

import { FileStore } from '@tus/file-store';
import { Server } from '@tus/server';

const BASE = '/files/';
const KEY_META = 'dockd-key';
const dir = path.resolve(process.env.TUS_DIR || 'tus-data');
const token = process.env.TUS_TOKEN_FILE
  ? fs.readFileSync(process.env.TUS_TOKEN_FILE, 'utf8').trim()
  : null;
const checksum = process.env.TUS_CHECKSUM === '1';
const maxSize = Number.parseInt(process.env.TUS_MAX_SIZE || '0', 10);
const logFile = process.env.TUS_LOG ? fs.openSync(process.env.TUS_LOG, 'a') : null;

fs.mkdirSync(dir, { recursive: true });

function log(entry) {
  if (logFile !== null) fs.writeSync(logFile, `${JSON.stringify({ t: Date.now(), ...entry })}\n`);
}

const sha256hex = (s) => crypto.createHash('sha256').update(s, 'utf8').digest('hex');

const datastore = new FileStore({ directory: dir });
const tus = new Server({
  path: BASE.replace(/\/$/, ''),
  datastore,
  maxSize: maxSize > 0 ? maxSize : undefined,
  namingFunction(_req, metadata) {
    const key = metadata?.[KEY_META];
    if (!key) {
      throw { status_code: 400, body: `Upload-Metadata must carry ${KEY_META}\n` };
    }
    return sha256hex(key);
  },
});

function isAuthorized(req) {
  if (token === null) return true;
  const got = req.headers.authorization || '';
  const want = `Bearer ${token}`;
  const a = crypto.createHash('sha256').update(got).digest();
  const b = crypto.createHash('sha256').update(want).digest();
  return crypto.timingSafeEqual(a, b);
}

function uploadId(url) {
  const p = new URL(url, 'http://x').pathname;
  return p.startsWith(BASE) ? p.slice(BASE.length) : null;
}

async function offsetOf(id) {
  try {
    return (await datastore.getUpload(id)).offset;
  } catch {
    return null;
  }
}

async function listUploads(prefix) {
  const out = [];
  for (const name of (await fsProm.readdir(dir)).sort()) {
    if (!name.endsWith('.json')) continue;
    const id = name.slice(0, -'.json'.length);
    let info;
    let st;
    try {
      info = JSON.parse(await fsProm.readFile(path.join(dir, name), 'utf8'));
      st = await fsProm.stat(path.join(dir, id));
    } catch {
      continue; // being created or removed right now
    }
    const key = info.metadata?.[KEY_META];
    if (typeof key !== 'string' || !key.startsWith(prefix)) continue;
    out.push({ id, key, size: info.size ?? null, offset: st.size, metadata: info.metadata });
  }
  return out;
}

function webRequest(req, body) {
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) {
    headers.set(k, Array.isArray(v) ? v.join(', ') : v);
  }
  return new Request(`http://${req.headers.host}${req.url}`, { method: req.method, headers, body });
}

async function sendWeb(res, resp, extraHeaders = {}) {
  const headers = Object.fromEntries(resp.headers.entries());
  Object.assign(headers, extraHeaders);
  const body = Buffer.from(await resp.arrayBuffer());
  res.writeHead(resp.status, headers);
  res.end(body);
}

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      chunks.push(c);
      size += c.length;
    });
    req.on('end', () => resolve(Buffer.concat(chunks, size)));
    req.on('error', () => resolve(null));
    req.on('aborted', () => resolve(null));
  });
}

async function serveUpload(res, id, entry) {
  let upload;
  try {
    upload = await datastore.getUpload(id);
  } catch {
    upload = null;
  }
  if (!upload || upload.offset !== upload.size) {
    log({ ...entry, status: 404 });
    plain(res, 404, 'Not found\n');
    return;
  }
  log({ ...entry, status: 200 });
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': String(upload.size) });
  const f = fs.createReadStream(path.join(dir, id));
  f.on('error', () => res.destroy());
  f.pipe(res);
}

function plain(res, status, text, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'text/plain', 'Tus-Resumable': '1.0.0', ...headers });
  res.end(text);
}

async function handle(req, res) {
  const id = uploadId(req.url);
  const entry = { method: req.method, id, offset: req.headers['upload-offset'] ?? null };
  if (!isAuthorized(req)) {
    log({ ...entry, status: 401 });
    plain(res, 401, 'Unauthorized\n', { 'WWW-Authenticate': 'Bearer' });
    return;
  }
  const pathname = new URL(req.url, 'http://x').pathname;
  if (req.method === 'GET' && (pathname === BASE || `${pathname}/` === BASE)) {
    const prefix = new URL(req.url, 'http://x').searchParams.get('prefix') || '';
    const body = JSON.stringify(await listUploads(prefix));
    log({ ...entry, status: 200, listed: prefix });
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(body);
    return;
  }
  if (req.method === 'GET' && id) {
    await serveUpload(res, id, entry);
    return;
  }
  if (req.method === 'OPTIONS' && checksum) {
    const resp = await tus.handleWeb(webRequest(req, null));
    const ext = resp.headers.get('tus-extension');
    log({ ...entry, status: resp.status });
    await sendWeb(res, resp, {
      'tus-extension': ext ? `${ext},checksum` : 'checksum',
      'tus-checksum-algorithm': 'sha1',
    });
    return;
  }
  if (req.method === 'PATCH' && checksum && req.headers['upload-checksum']) {
    const [algo, want] = String(req.headers['upload-checksum']).split(' ');
    entry.checksum = algo;
    const before = id ? await offsetOf(id) : null;
    const body = await readBody(req);
    if (body === null) {
      log({ ...entry, status: 'aborted', received: 0, discarded: true });
      return;
    }
    if (algo !== 'sha1') {
      log({ ...entry, status: 400, received: 0 });
      plain(res, 400, 'Unsupported checksum algorithm\n');
      return;
    }
    const got = crypto.createHash('sha1').update(body).digest('base64');
    if (got !== want) {
      log({ ...entry, status: 460, received: 0, body: body.length });
      plain(res, 460, 'Checksum Mismatch\n');
      return;
    }
    const resp = await tus.handleWeb(webRequest(req, body));
    const after = id ? await offsetOf(id) : null;
    log({ ...entry, status: resp.status, received: before !== null && after !== null ? after - before : null });
    await sendWeb(res, resp);
    return;
  }
  const before = req.method === 'PATCH' && id ? await offsetOf(id) : null;
  res.on('close', async () => {
    const e = { ...entry, status: res.statusCode };
    if (before !== null) {
      const after = await offsetOf(id);
      e.received = after !== null ? after - before : null;
    }
    log(e);
  });
  await tus.handle(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    log({ method: req.method, url: req.url, error: String(err) });
    if (!res.headersSent) plain(res, 500, 'Internal error\n');
    else res.destroy();
  });
});
server.listen(Number.parseInt(process.env.TUS_PORT || '0', 10), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
