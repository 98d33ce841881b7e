'use strict';
// Calls the AvroEcho server from avsc, the Node.js implementation of Avro, over HTTP.
//
// Usage: python protocol.py | node avsc_client.js PORT same|evolved
//
// `same` uses the protocol read from stdin as is. `evolved` is a client whose protocol
// differs (other docs, an extra request field with a default), so the server must do the
// full handshake and resolve the client's schemas against its own. Prints one JSON object
// with the results; on any unexpected failure, exits non-zero with the reason on stderr.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const avro = require('avsc');

const CALL_TIMEOUT_MS = 10000;
const SAFETY_TIMEOUT_MS = 45000; // under the test's subprocess timeout, so we report first

// One call written by hand (see callUnknownMessage): the RPC spec's handshake, then the call,
// for a message whose request is one string.
const MD5 = {type: 'fixed', name: 'MD5', size: 16};
const META = {type: 'map', values: 'bytes'};
const CALL_REQUEST = avro.Type.forSchema({type: 'record', name: 'CallRequest', fields: [
  {name: 'handshake', type: {type: 'record', name: 'HandshakeRequest', fields: [
    {name: 'clientHash', type: MD5},
    {name: 'clientProtocol', type: ['null', 'string']},
    {name: 'serverHash', type: 'MD5'},
    {name: 'meta', type: ['null', META]},
  ]}},
  {name: 'meta', type: META},
  {name: 'message', type: 'string'},
  {name: 'query', type: 'string'},
]});
const CALL_RESPONSE_HEAD = avro.Type.forSchema({type: 'record', name: 'CallResponseHead', fields: [
  {name: 'handshake', type: {type: 'record', name: 'HandshakeResponse', fields: [
    {name: 'match', type: {type: 'enum', name: 'HandshakeMatch', symbols: ['BOTH', 'CLIENT', 'NONE']}},
    {name: 'serverProtocol', type: ['null', 'string']},
    {name: 'serverHash', type: ['null', MD5]},
    {name: 'meta', type: ['null', META]},
  ]}},
  {name: 'meta', type: META},
  {name: 'isError', type: 'boolean'},
]});
// A message that declares no errors can still fail with a system error: a string, in a union.
const SYSTEM_ERROR = avro.Type.forSchema(['string']);

function evolve(protocol) {
  const evolved = structuredClone(protocol);
  evolved.doc = 'A newer client of the echo server.';
  for (const [name, message] of Object.entries(evolved.messages)) {
    message.doc = `The newer client's ${name}.`;
    // First, not last: a server that skipped schema resolution would then misread `query`,
    // rather than silently ignore a trailing byte.
    message.request.unshift({name: 'shout', type: 'boolean', default: false});
  }
  return evolved;
}

function readAll(stream) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    stream.on('data', (chunk) => chunks.push(chunk));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

// One HTTP request; callback(err) or callback(null, response) once the status is 200.
function post(port, callback) {
  const request = http.request(
    {hostname: '127.0.0.1', port, method: 'POST', headers: {'Content-Type': 'avro/binary'}},
    (response) => {
      if (response.statusCode === 200) {
        callback(null, response);
        return;
      }
      readAll(response).then((body) => callback(new Error(
        `HTTP ${response.statusCode}: ${body.toString().trim()}`)), callback);
    });
  request.setTimeout(CALL_TIMEOUT_MS, () => request.destroy(new Error('HTTP request timed out')));
  request.on('error', callback);
  return request;
}

function call(client, name, query) {
  return new Promise((resolve, reject) => {
    client.emitMessage(name, {query}, {timeout: CALL_TIMEOUT_MS}, (err, response) => {
      if (err) {
        reject(new Error(`${name}(${JSON.stringify(query)}) failed: ${err.message}`));
      } else {
        resolve(response);
      }
    });
  });
}

// avsc's client checks the server's protocol at the handshake and refuses, on its side, to
// call a message the server lacks ("incompatible protocol"): the server never sees the call.
// To get the server's own answer, this call is written by hand, with avsc's types.
async function callUnknownMessage(port, protocol) {
  const extended = structuredClone(protocol);
  extended.messages.shout = {request: [{name: 'query', type: 'string'}], response: 'string'};
  const text = JSON.stringify(extended);
  const hash = crypto.createHash('md5').update(text).digest();
  const body = CALL_REQUEST.toBuffer({
    // With the protocol sent at once, one request is enough (no NONE round).
    handshake: {clientHash: hash, clientProtocol: text, serverHash: hash, meta: null},
    meta: {},
    message: 'shout',
    query: 'Hello World',
  });
  const answer = await new Promise((resolve, reject) => {
    post(port, (err, response) => (err ? reject(err) : readAll(response).then(resolve, reject)))
      .end(frame(body));
  });
  const payload = unframe(answer);
  const head = CALL_RESPONSE_HEAD.decode(payload, 0);
  if (head.offset < 0 || !head.value.isError) {
    throw new Error(`shout: expected an error, got ${payload.toString('hex')}`);
  }
  return SYSTEM_ERROR.fromBuffer(payload.subarray(head.offset));
}

function frame(message) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(message.length);
  return Buffer.concat([length, message, Buffer.alloc(4)]);
}

function unframe(body) {
  const frames = [];
  for (let offset = 0; ;) {
    if (offset + 4 > body.length) {
      throw new Error(`body ends before its last frame: ${body.toString('hex')}`);
    }
    const length = body.readUInt32BE(offset);
    offset += 4;
    if (length === 0) {
      return Buffer.concat(frames);
    }
    frames.push(body.subarray(offset, offset + length));
    offset += length;
  }
}

async function main() {
  const [port, variant] = process.argv.slice(2);
  if (!/^\d+$/.test(port || '') || !['same', 'evolved'].includes(variant)) {
    throw new Error('usage: node avsc_client.js PORT same|evolved  (protocol JSON on stdin)');
  }
  const served = JSON.parse(fs.readFileSync(0, 'utf8'));
  const protocol = variant === 'evolved' ? evolve(served) : served;

  const client = avro.Service.forProtocol(protocol).createClient({timeout: CALL_TIMEOUT_MS});
  // noPing: the first call does the handshake, so handshakes are recorded in call order.
  const channel = client.createChannel((callback) => post(port, callback), {noPing: true});
  const handshakes = [];
  channel.on('handshake', (request, response) => handshakes.push(response.match));

  // One call at a time, so that the list of handshakes is deterministic.
  const results = {
    echo: await call(client, 'echo', 'Hello World'),
    split: await call(client, 'split', 'Hello World'),
    unicode_echo: await call(client, 'echo', 'héllo 日本語 🎉'),
    unicode_split: await call(client, 'split', 'héllo 日本語 🎉'),
    empty_echo: await call(client, 'echo', ''),
    empty_split: await call(client, 'split', ''),
    unknown: await callUnknownMessage(port, protocol),
  };
  return {...results, handshakes};
}

// Kept referenced: should avsc ever drop a callback, the script fails here rather than exit 0
// with nothing on stdout.
const safetyTimer = setTimeout(
  () => fail(new Error(`no result after ${SAFETY_TIMEOUT_MS} ms`)), SAFETY_TIMEOUT_MS);

function fail(err) {
  process.stderr.write(`avsc_client.js: ${err.stack || err}\n`);
  process.exit(1);
}

main().then((results) => {
  clearTimeout(safetyTimer);
  process.stdout.write(JSON.stringify(results) + '\n');
}, fail);
