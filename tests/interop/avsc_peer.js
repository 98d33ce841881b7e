'use strict';
// avsc, the Node.js implementation of Avro, as a client of our server and as a server for our
// client, for any protocol, driven by tests/test_generated_protocols.py.
//
// Usage: node avsc_peer.js, then one JSON job per line on stdin; one JSON answer per line on
// stdout, in order. Data cross in Avro binary, hex-encoded, so that no JSON mapping of Avro
// values (bytes, longs, unions) stands between the two implementations:
//   {"op": "call", "port": P, "protocol": {...}, "calls": [{"message": m, "request": hex}]}
//     avsc calls the server on port P, one call at a time; answers {"results": [...]}, each
//     {"response": hex} or {"error": hex}, the error in the message's errors union.
//   {"op": "serve", "protocol": {...}, "script": [{"message": m, "response": hex} or
//     {"message": m, "error": hex}]}
//     an avsc server for the protocol over HTTP, answering the calls in the script's order;
//     answers {"port": P}.
//   {"op": "served"} answers {"requests": [hex, ...]}, the requests the server got.
// A job that fails answers {"failure": "..."}.

const http = require('http');
const readline = require('readline');
const avro = require('avsc');

const CALL_TIMEOUT_MS = 10000;
// Wrapped unions: avsc then takes every union value, a declared error's too, as it decoded
// it, and never turns an error record into a system error string (which its non-strict
// servers do to any value that is a JavaScript Error).
// A function, not one object: avsc keeps its registry of type names in the options.
const serviceOptions = () => ({wrapUnions: true});

function post(port) {
  return (callback) => {
    const request = http.request(
      {hostname: '127.0.0.1', port, method: 'POST', headers: {'Content-Type': 'avro/binary'}},
      (response) => {
        if (response.statusCode === 200) {
          callback(null, response);
        } else {
          callback(new Error(`HTTP ${response.statusCode}`));
        }
      });
    request.setTimeout(CALL_TIMEOUT_MS, () => request.destroy(new Error('timed out')));
    request.on('error', callback);
    return request;
  };
}

async function callServer(job) {
  const service = avro.Service.forProtocol(job.protocol, serviceOptions());
  const client = service.createClient({buffering: true, timeout: CALL_TIMEOUT_MS});
  client.createChannel(post(job.port), {noPing: true});
  const results = [];
  for (const call of job.calls) {
    const message = service.message(call.message);
    const request = message.requestType.fromBuffer(Buffer.from(call.request, 'hex'));
    results.push(await new Promise((resolve) => {
      client.emitMessage(call.message, request, (err, response) => {
        if (err) {
          // A system error reaches a non-strict client as a JavaScript Error.
          const error = err instanceof Error ? {string: err.message} : err;
          resolve({error: message.errorType.toBuffer(error).toString('hex')});
        } else {
          const value = message.oneWay ? null : response;
          resolve({response: message.responseType.toBuffer(value).toString('hex')});
        }
      });
    }));
  }
  client.destroyChannels();
  return {results};
}

// One HTTP server for the whole run; each `serve` job puts its own avsc server behind it.
let current = null;
const httpServer = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'avro/binary');
  current.server.createChannel((callback) => {
    callback(null, res);
    return req;
  });
});

function serve(job) {
  const service = avro.Service.forProtocol(job.protocol, serviceOptions());
  const server = service.createServer({silent: true});
  const script = job.script.slice();
  const requests = [];
  current = {server, requests};
  for (const message of service.messages) {
    server.onMessage(message.name, function (request, callback) {
      requests.push(message.requestType.toBuffer(request).toString('hex'));
      const step = script.shift();
      if (!step || step.message !== message.name) {
        throw new Error(`unexpected call of ${message.name}`);
      }
      if (message.oneWay) {
        return;  // avsc gives one-way handlers no callback
      }
      if (step.error !== undefined) {
        callback(message.errorType.fromBuffer(Buffer.from(step.error, 'hex')));
      } else {
        callback(null, message.responseType.fromBuffer(Buffer.from(step.response, 'hex')));
      }
    });
  }
  return {port: httpServer.address().port};
}

async function run(job) {
  switch (job.op) {
    case 'call':
      return callServer(job);
    case 'serve':
      return serve(job);
    case 'served':
      return {requests: current.requests};
    default:
      throw new Error(`unknown op ${job.op}`);
  }
}

async function main() {
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const lines = readline.createInterface({input: process.stdin});
  for await (const line of lines) {
    let answer;
    try {
      answer = await run(JSON.parse(line));
    } catch (err) {
      answer = {failure: String(err.stack || err)};
    }
    process.stdout.write(JSON.stringify(answer) + '\n');
  }
  httpServer.close();
}

main().catch((err) => {
  process.stderr.write(`avsc_peer.js: ${err.stack || err}\n`);
  process.exit(1);
});
