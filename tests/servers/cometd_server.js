'use strict';
// A real cometd-nodejs-server (long-polling only: it refuses WebSocket) for the interop tests.
// Bayeux URL: http://127.0.0.1:<port>/cometd ; control API: http://127.0.0.1:<port>/control/*
// (see control.js). Options (argv or COMETD_TEST_* env): --port 0 --timeout 2000 --interval 0
// --max-interval 3000 --log-level info. Prints "READY <port> <control_port>" when listening.

const http = require('http');
const cometd = require('cometd-nodejs-server');
const {parseOptions, AuthPolicy, AUTH_ERROR, Publisher, controlHandler, listen,
    dropCometdSessions, cometdSubscriptions} = require('./control');

const options = parseOptions(process.argv.slice(2), {
    host: '127.0.0.1',
    port: 0,
    timeout: 2000,
    interval: 0,
    maxInterval: 3000,
    logLevel: 'info',
});

const server = cometd.createCometDServer({
    timeout: options.timeout,
    interval: options.interval,
    maxInterval: options.maxInterval,
    logLevel: options.logLevel,
});

const sessions = new Set();
server.addListener('sessionAdded', session => sessions.add(session));
server.addListener('sessionRemoved', session => sessions.delete(session));

const auth = new AuthPolicy();
// Replies whose request failed the auth check; rewritten by the outgoing extension because the
// library turns a vetoed message into "404::message_deleted".
const rejectedReplies = new WeakSet();

server.addExtension({
    incoming: (cometdServer, session, message, callback) => {
        const channel = message.channel;
        if (channel !== '/meta/handshake' && channel !== '/meta/connect') {
            callback(undefined, true);
            return;
        }
        const request = cometdServer.context.request;
        const header = request ? request.headers.authorization : undefined;
        if (auth.accepts(header, message)) {
            callback(undefined, true);
            return;
        }
        rejectedReplies.add(message.reply);
        if (channel === '/meta/connect' && session) {
            // As Salesforce does: the session is gone, the client must authenticate again.
            cometdServer._removeServerSession(session, false);
        }
        callback(undefined, false);
    },
    outgoing: (cometdServer, sender, session, message, callback) => {
        if (rejectedReplies.has(message)) {
            message.successful = false;
            message.error = AUTH_ERROR;
            message.advice = {reconnect: 'none', interval: 0};
        }
        callback(undefined, message);
    },
});

const publisher = new Publisher((channel, data) => {
    server.createServerChannel(channel).publish(null, data);
});

const harness = {
    auth: auth,
    publisher: publisher,
    // Removes every session as an expiry would; a held /meta/connect is answered so the client
    // notices on its next connect (402::session_unknown).
    dropSessions: () => dropCometdSessions(server, sessions),
    stats: () => {
        const subscriptions = cometdSubscriptions(sessions);
        return {
            server: 'cometd-nodejs-server',
            sessions: sessions.size,
            session_ids: Array.from(sessions, s => s.id),
            subscriptions: subscriptions,
            // Sessions with a /meta/connect parked on the server right now.
            held_connects: Array.from(sessions).filter(s => s._scheduler).length,
        };
    },
};

const control = controlHandler(harness);
const httpServer = http.createServer((request, response) => {
    if (request.url.startsWith('/control/')) {
        control(request, response);
    } else {
        server.handle(request, response);
    }
});
listen(httpServer, options);
