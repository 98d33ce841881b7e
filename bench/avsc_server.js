'use strict';
// An AvroEcho server on avsc, the Node.js implementation of Avro, over HTTP: the benchmark's
// point of comparison from another language (bench/run.py starts it).
//
// Usage: python protocol.py | node bench/avsc_server.js PORT [WORKERS]
//
// PORT 0 picks a free port. Prints "... listening on http://127.0.0.1:PORT/" on stderr, like
// server.py. The protocol comes from protocol.py, its one home. With WORKERS above 1, that
// many processes serve the port (Node's cluster), the peer of `server.py --workers N`; give
// them a port, as to server.py.

const cluster = require('cluster');
const fs = require('fs');
const http = require('http');
const path = require('path');
// avsc is installed for the interop tests (`npm ci` in tests/interop, which `make bench`
// runs); the benchmark uses that copy rather than a second package.json.
const avro = require(path.join(__dirname, '..', 'tests', 'interop', 'node_modules', 'avsc'));

// The same listen backlog as server.py, so a burst of connections is queued alike.
const LISTEN_BACKLOG = 2048;

function main() {
  const port = process.argv[2];
  const workers = Number(process.argv[3] || '1');
  if (!/^\d+$/.test(port || '') || !(workers >= 1)) {
    throw new Error('usage: python protocol.py | node avsc_server.js PORT [WORKERS]');
  }
  if (workers > 1 && cluster.isPrimary) {
    // The primary reads the protocol once and hands it to the workers; it says it listens
    // once they all do.
    const env = {AVRO_PROTOCOL: fs.readFileSync(0, 'utf8')};
    let listening = 0;
    cluster.on('listening', (worker, address) => {
      listening += 1;
      if (listening === workers) {
        process.stderr.write(`avsc AvroEcho server (${workers} processes) listening on ` +
                             `http://${address.address}:${address.port}/\n`);
      }
    });
    for (let i = 0; i < workers; i += 1) {
      cluster.fork(env);
    }
    for (const signal of ['SIGINT', 'SIGTERM']) {
      process.on(signal, () => {
        for (const worker of Object.values(cluster.workers)) {
          worker.kill();
        }
        process.exit(0);
      });
    }
    return;
  }
  const protocol = JSON.parse(process.env.AVRO_PROTOCOL || fs.readFileSync(0, 'utf8'));
  const httpServer = serve(protocol);
  httpServer.listen({host: '127.0.0.1', port: Number(port), backlog: LISTEN_BACKLOG}, () => {
    if (cluster.isWorker) {
      return; // the primary says it once
    }
    const address = httpServer.address();
    process.stderr.write(
      `avsc AvroEcho server listening on http://${address.address}:${address.port}/\n`);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => httpServer.close(() => process.exit(0)));
  }
}

// An HTTP server that answers AvroEcho calls.
function serve(protocol) {
  const server = avro.Service.forProtocol(protocol).createServer({silent: true})
    .onEcho((query, callback) => callback(null, query))
    // Half of the query counted in characters (code points), as server.py counts them.
    .onSplit((query, callback) => {
      const characters = Array.from(query);
      callback(null, characters.slice(0, Math.floor(characters.length / 2)).join(''));
    });

  return http.createServer((request, response) => {
    if (request.method !== 'POST') {
      response.writeHead(405, {'Content-Type': 'text/plain', Allow: 'POST'});
      response.end('Avro calls must be POSTed\n');
      return;
    }
    response.setHeader('Content-Type', 'avro/binary');
    // A stateless channel: one request in, one response out, as the HTTP transport wants.
    server.createChannel((callback) => {
      callback(null, response);
      return request;
    });
  });
}

main();
