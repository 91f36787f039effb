'use strict';
// A cometd-nodejs-server with Salesforce Streaming API semantics, for the no-loss tests:
//   - a retention buffer per channel with increasing replay ids (data.event.replayId);
//   - the replay extension: handshake ext {replay: true} is answered with
//     {replay: true, "payload.format": true}; a subscribe's ext.replay = {channel: id} replays
//     the retained events after id (-1: new only, -2: all retained; absent: -1);
//   - "400::The replayId {N} you provided was invalid. ..." for an id outside the buffer;
//   - long-polling only (cometd-nodejs-server has no WebSocket);
//   - "403::Unknown client" + advice {reconnect: "handshake"} for a session that is gone;
//   - the reconnect budget: a session expires when no /meta/connect arrives within
//     --max-interval ms of a response (Salesforce: 40 s; short in tests).
// Optional: --ack 1 adds cometd-nodejs-server's acknowledgement extension (Salesforce has none,
// but it lets the client's ack path run against a real server); --replay 0 turns replay off.
// --buffer-file PATH keeps the retention buffer across a restart (written on SIGTERM/SIGINT,
// read at start), as Salesforce's event bus outlives any one server.
//
// Bayeux URL http://127.0.0.1:<port>/cometd ; control API /control/* as in control.js, plus
// POST /control/retention {size, channel?} to trim the buffer (all channels when no channel).
// Event data: {schema, payload: {seq, ts, pad, CreatedDate}, event: {replayId, EventUuid}}.
// Prints "READY <port> <control_port>" when listening.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const cometd = require('cometd-nodejs-server');
const {AcknowledgedMessagesExtension} = require('cometd-nodejs-server/ack-extension');
const {parseOptions, AuthPolicy, Publisher, controlHandler, listen,
    dropCometdSessions, cometdSubscriptions} = require('./control');

const options = parseOptions(process.argv.slice(2), {
    host: '127.0.0.1',
    port: 0,
    timeout: 2000,
    interval: 0,
    maxInterval: 40000,
    sweepPeriod: 100,
    retention: 10000,
    firstReplayId: 1000,
    replayStep: 1,
    replay: 1,
    ack: 0,
    bufferFile: '',
    logLevel: 'info',
});

const INVALID_REPLAY = id =>
    `400::The replayId {${id}} you provided was invalid. ` +
    'Please provide a valid ID, -2 to replay all events, or -1 to replay only new events.';

const server = cometd.createCometDServer({
    timeout: options.timeout,
    interval: options.interval,
    maxInterval: options.maxInterval,
    sweepPeriod: options.sweepPeriod,
    logLevel: options.logLevel,
});
if (options.ack) {
    server.addExtension(new AcknowledgedMessagesExtension());
}

const sessions = new Set();
server.addListener('sessionAdded', session => sessions.add(session));
server.addListener('sessionRemoved', session => sessions.delete(session));

// channel -> {next: the next replay id, events: [{replayId, data}] oldest first}
let buffers = {};
const counters = {invalid_replays: 0, replayed: 0, subscribes: []};

function buffer(channel) {
    let b = buffers[channel];
    if (!b) {
        b = buffers[channel] = {next: options.firstReplayId, events: []};
    }
    return b;
}

function trim(b, size) {
    if (b.events.length > size) {
        b.events.splice(0, b.events.length - size);
    }
}

// Where a subscription with replay id `id` starts, or null when the id is not valid: the
// events after it must all still be retained, and it must be an id this channel issued.
function replayStart(b, id) {
    if (id === -1) {
        return b.events.length;
    }
    if (id === -2) {
        return 0;
    }
    if (!Number.isInteger(id)) {
        return null;
    }
    const lastIssued = b.next - options.replayStep;
    if (id > lastIssued) {
        return null;
    }
    if (b.events.length === 0) {
        // Nothing retained: only the newest id is still a valid place to be.
        return id === lastIssued ? 0 : null;
    }
    const oldest = b.events[0].replayId;
    if (id < oldest - options.replayStep) {
        return null;
    }
    let i = 0;
    while (i < b.events.length && b.events[i].replayId <= id) {
        ++i;
    }
    return i;
}

// Subscribe replies whose replay id was invalid -> that id; and valid ones -> the events to
// replay, delivered right after the subscription in the same tick (no live event can slip
// between the backlog and the subscription, so nothing is missed or doubled).
const invalidReplies = new WeakMap();
const replayPlans = new WeakMap();
const handshakeReplay = new WeakSet();

server.policy = {
    canSubscribe: (session, message, channel, callback) => {
        callback(undefined, !invalidReplies.has(message.reply));
    },
};

server.addExtension({
    incoming: (cometdServer, session, message, callback) => {
        if (message.channel === '/meta/handshake' && options.replay) {
            if (message.ext && message.ext.replay === true) {
                handshakeReplay.add(message.reply);
            }
        } else if (message.channel === '/meta/subscribe' && options.replay && session) {
            const map = (message.ext && message.ext.replay) || {};
            const subs = Array.isArray(message.subscription) ? message.subscription : [message.subscription];
            const plan = [];
            for (const channel of subs) {
                if (typeof channel !== 'string') {
                    continue;
                }
                const requested = Object.prototype.hasOwnProperty.call(map, channel) ? map[channel] : -1;
                const b = buffer(channel);
                const start = replayStart(b, requested);
                counters.subscribes.push({channel: channel, replay: requested, valid: start !== null});
                if (counters.subscribes.length > 100) {
                    counters.subscribes.shift();
                }
                if (start === null) {
                    counters.invalid_replays += 1;
                    invalidReplies.set(message.reply, requested);
                    break;
                }
                plan.push({channel: channel, events: b.events.slice(start)});
            }
            if (!invalidReplies.has(message.reply)) {
                replayPlans.set(message.reply, plan);
            }
        }
        callback(undefined, true);
    },
    outgoing: (cometdServer, sender, session, message, callback) => {
        if (handshakeReplay.has(message) && message.successful) {
            message.ext = Object.assign(message.ext || {}, {replay: true, 'payload.format': true});
        }
        if (invalidReplies.has(message)) {
            message.successful = false;
            message.error = INVALID_REPLAY(invalidReplies.get(message));
        }
        if (message.error === '402::session_unknown') {
            // Salesforce's wording for an expired or unknown session.
            message.error = '403::Unknown client';
            message.advice = {reconnect: 'handshake', interval: 0};
        }
        const plan = replayPlans.get(message);
        if (plan && message.successful && session) {
            for (const step of plan) {
                for (const event of step.events) {
                    session.deliver(null, step.channel, event.data);
                    counters.replayed += 1;
                }
            }
        }
        callback(undefined, message);
    },
});

function publishEvent(channel, data) {
    const b = buffer(channel);
    const replayId = b.next;
    b.next += options.replayStep;
    const event = {
        schema: 'cometd-bridge-test',
        payload: Object.assign({}, data, {CreatedDate: new Date(data.ts).toISOString()}),
        event: {replayId: replayId, EventUuid: crypto.randomUUID()},
    };
    b.events.push({replayId: replayId, data: event});
    trim(b, options.retention);
    server.createServerChannel(channel).publish(null, event);
}

const publisher = new Publisher(publishEvent);

function loadBuffers() {
    if (!options.bufferFile || !fs.existsSync(options.bufferFile)) {
        return;
    }
    const saved = JSON.parse(fs.readFileSync(options.bufferFile, 'utf8'));
    buffers = saved.buffers;
    Object.assign(publisher.sequences, saved.sequences);
}

function saveBuffers() {
    if (!options.bufferFile) {
        return;
    }
    const tmp = options.bufferFile + '.tmp';
    fs.writeFileSync(tmp, JSON.stringify({buffers: buffers, sequences: publisher.sequences}));
    fs.renameSync(tmp, options.bufferFile);
}

const harness = {
    auth: new AuthPolicy(),
    publisher: publisher,
    // As a server-side expiry: the session is forgotten; a held /meta/connect is answered, and
    // the client's next message gets "403::Unknown client".
    dropSessions: () => dropCometdSessions(server, sessions),
    stats: () => {
        const subscriptions = cometdSubscriptions(sessions);
        const retention = {};
        for (const [channel, b] of Object.entries(buffers)) {
            retention[channel] = {
                size: b.events.length,
                oldest: b.events.length ? b.events[0].replayId : null,
                newest: b.events.length ? b.events[b.events.length - 1].replayId : null,
                last_issued: b.next - options.replayStep,
            };
        }
        return {
            server: 'salesforce',
            replay: Boolean(options.replay),
            ack: Boolean(options.ack),
            sessions: sessions.size,
            session_ids: Array.from(sessions, s => s.id),
            held_connects: Array.from(sessions).filter(s => s._scheduler).length,
            subscriptions: subscriptions,
            retention: retention,
            invalid_replays: counters.invalid_replays,
            replayed: counters.replayed,
            subscribes: counters.subscribes,
        };
    },
};

function readBody(request) {
    return new Promise((resolve, reject) => {
        let content = '';
        request.setEncoding('utf8');
        request.on('data', chunk => {
            content += chunk;
        });
        request.on('end', () => {
            try {
                resolve(content === '' ? {} : JSON.parse(content));
            } catch (e) {
                reject(e);
            }
        });
        request.on('error', reject);
    });
}

function retentionHandler(request, response) {
    readBody(request).then(body => {
        const size = body.size;
        if (!Number.isInteger(size) || size < 0) {
            throw new Error('size (integer >= 0) is required');
        }
        const channels = body.channel === undefined ? Object.keys(buffers) : [body.channel];
        for (const channel of channels) {
            trim(buffer(channel), size);
        }
        if (body.channel === undefined) {
            options.retention = size;
        }
        response.writeHead(200, {'Content-Type': 'application/json'});
        response.end(JSON.stringify(harness.stats().retention));
    }).catch(e => {
        response.writeHead(400, {'Content-Type': 'application/json'});
        response.end(JSON.stringify({error: String(e.message || e)}));
    });
}

loadBuffers();
const control = controlHandler(harness);
const httpServer = http.createServer((request, response) => {
    if (request.method === 'POST' && request.url.split('?')[0] === '/control/retention') {
        retentionHandler(request, response);
    } else if (request.url.startsWith('/control/')) {
        control(request, response);
    } else {
        server.handle(request, response);
    }
});
// Registered before listen()'s own handler, which exits the process.
process.on('SIGTERM', saveBuffers);
process.on('SIGINT', saveBuffers);
listen(httpServer, options);
