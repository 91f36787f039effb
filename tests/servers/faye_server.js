'use strict';
// A real Faye server (WebSocket and long-polling) for the interop tests.
// Bayeux URL: http://127.0.0.1:<port>/bayeux ; control API: http://127.0.0.1:<port>/control/*
// (see control.js). Options (argv or COMETD_TEST_* env), in milliseconds like CometD's:
// --port 0 --timeout 2000 --interval 0 --ping 0. Faye has no maxInterval: it forgets a client
// 2 * timeout after its last connect. Prints "READY <port> <control_port>" when listening.

const http = require('http');
const faye = require('faye');
const {parseOptions, AuthPolicy, AUTH_ERROR, Publisher, controlHandler, listen} = require('./control');

const options = parseOptions(process.argv.slice(2), {
    host: '127.0.0.1',
    port: 0,
    timeout: 2000,
    interval: 0,
    ping: 0,
});

const adapterOptions = {
    mount: '/bayeux',
    // Faye counts in seconds.
    timeout: options.timeout / 1000,
    engine: {interval: options.interval / 1000},
};
if (options.ping > 0) {
    adapterOptions.ping = options.ping / 1000;
}
const adapter = new faye.NodeAdapter(adapterOptions);
// Proxy engine: createClient/destroyClient/publish, and the events of the memory engine.
const engine = adapter._server._engine;

const sessions = new Set();
engine.bind('handshake', clientId => sessions.add(clientId));
engine.bind('disconnect', clientId => sessions.delete(clientId));

const auth = new AuthPolicy();
adapter.addExtension({
    incoming: (message, request, callback) => {
        const channel = message.channel;
        if (channel === '/meta/handshake' || channel === '/meta/connect') {
            const header = request ? request.headers.authorization : undefined;
            if (!auth.accepts(header, message)) {
                // Faye copies message.error into the reply and skips the operation.
                message.error = AUTH_ERROR;
                if (channel === '/meta/connect' && message.clientId) {
                    const clientId = message.clientId;
                    // After this connect is answered (synchronously, with the auth error):
                    // forget the session, as Salesforce does.
                    setImmediate(() => engine.destroyClient(clientId));
                }
            }
        }
        callback(message);
    },
    outgoing: (message, request, callback) => {
        if (message.error === AUTH_ERROR) {
            // Faye advises "handshake" on every error; an auth failure is final until the
            // client authenticates again.
            message.advice = {reconnect: 'none', interval: 0};
        }
        callback(message);
    },
});

let nextId = 0;
const publisher = new Publisher((channel, data) => {
    nextId += 1;
    engine.publish({channel: channel, data: data, id: 'srv' + nextId});
});

const harness = {
    auth: auth,
    publisher: publisher,
    // Destroys every client as Faye's own expiry would; held connects are flushed, and the next
    // connect gets "401:<clientId>:Unknown client" with advice reconnect=handshake.
    dropSessions: () => {
        const dropped = Array.from(sessions);
        for (const clientId of dropped) {
            engine.destroyClient(clientId);
        }
        return dropped.length;
    },
    stats: () => {
        const subscriptions = {};
        for (const [clientId, channels] of engine._engine._clients) {
            if (!sessions.has(clientId)) {
                continue;
            }
            for (const channel of channels) {
                subscriptions[channel] = (subscriptions[channel] || 0) + 1;
            }
        }
        return {
            server: 'faye',
            sessions: sessions.size,
            session_ids: Array.from(sessions),
            subscriptions: subscriptions,
            // Clients with a /meta/connect parked on the server right now.
            held_connects: Array.from(sessions).filter(id => {
                const conn = engine.connection(id, false);
                return Boolean(conn && conn._timeouts && conn._timeouts.has('connection'));
            }).length,
        };
    },
};

const control = controlHandler(harness);
const httpServer = http.createServer((request, response) => {
    if (request.url.startsWith('/control/')) {
        control(request, response);
    } else {
        response.writeHead(404, {'Content-Type': 'text/plain'});
        response.end('not found\n');
    }
});
// Faye takes /bayeux (HTTP and WebSocket upgrades); everything else reaches the handler above.
adapter.attach(httpServer);
listen(httpServer, options);
