'use strict';
// Shared by cometd_server.js and faye_server.js: command-line options, the HTTP control API
// (/control/*) that pytest fixtures drive, message payloads with per-channel sequence numbers,
// paced publishing, and the bearer-token check used by the auth mode.

// Defaults, then environment (COMETD_TEST_<NAME>, e.g. COMETD_TEST_MAX_INTERVAL), then
// --name value / --name=value arguments (kebab-case, e.g. --max-interval 3000).
function parseOptions(argv, defaults) {
    const options = Object.assign({}, defaults);
    for (const key of Object.keys(defaults)) {
        const env = process.env['COMETD_TEST_' + toKebab(key).replace(/-/g, '_').toUpperCase()];
        if (env !== undefined) {
            options[key] = env;
        }
    }
    for (let i = 0; i < argv.length; ++i) {
        const arg = argv[i];
        if (!arg.startsWith('--')) {
            continue;
        }
        let name = arg.slice(2);
        let value;
        const eq = name.indexOf('=');
        if (eq >= 0) {
            value = name.slice(eq + 1);
            name = name.slice(0, eq);
        } else {
            value = argv[++i];
        }
        options[toCamel(name)] = value;
    }
    for (const key of Object.keys(options)) {
        if (typeof defaults[key] === 'number') {
            options[key] = Number(options[key]);
        }
    }
    return options;
}

function toCamel(name) {
    return name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

function toKebab(name) {
    return name.replace(/[A-Z]/g, c => '-' + c.toLowerCase());
}

// Auth mode shared by both servers: "require" rejects any token that is not the current one
// (missing, wrong, or listed as expired). Mirrors what Salesforce does with a stale session id.
class AuthPolicy {
    constructor() {
        this.mode = 'off';
        this.token = null;
        this.expired = new Set();
        this.rejected = 0;
    }

    configure(body) {
        const mode = body.mode || 'off';
        if (mode !== 'off' && mode !== 'require') {
            throw new Error('mode must be "off" or "require"');
        }
        this.mode = mode;
        this.token = body.token === undefined ? null : String(body.token);
        this.expired = new Set((body.expired || []).map(String));
    }

    // Returns true when the message may pass. headerValue is the Authorization header.
    accepts(headerValue, message) {
        if (this.mode === 'off') {
            return true;
        }
        let token = null;
        if (typeof headerValue === 'string' && headerValue.startsWith('Bearer ')) {
            token = headerValue.slice('Bearer '.length).trim();
        }
        const ext = message && message.ext;
        if (token === null && ext && ext.auth && typeof ext.auth.token === 'string') {
            token = ext.auth.token;
        }
        const ok = token !== null && token === this.token && !this.expired.has(token);
        if (!ok) {
            this.rejected += 1;
        }
        return ok;
    }

    snapshot() {
        return {mode: this.mode, rejected: this.rejected};
    }
}

const AUTH_ERROR = '401::Authentication invalid';

// Publishes `count` messages with data {seq, ts, pad}; seq continues per channel across calls so a
// test can check that every message arrived exactly once. Yields to the event loop between
// batches (or paces to `rate` messages/second) so held connects can be answered meanwhile.
class Publisher {
    constructor(publishOne) {
        this._publishOne = publishOne;
        this.sequences = {};
        this.published = {};
        this.total = 0;
    }

    publish(channel, count, size, rate) {
        const pad = 'x'.repeat(Math.max(0, size | 0));
        const first = (this.sequences[channel] || 0) + 1;
        const batch = 200;
        let sent = 0;
        const started = Date.now();
        return new Promise(resolve => {
            const step = () => {
                let allowed = count - sent;
                if (rate > 0) {
                    const due = Math.floor(((Date.now() - started) / 1000) * rate) + 1;
                    allowed = Math.min(allowed, due - sent);
                }
                allowed = Math.min(allowed, batch);
                for (let i = 0; i < allowed; ++i) {
                    const seq = (this.sequences[channel] || 0) + 1;
                    this.sequences[channel] = seq;
                    this._publishOne(channel, {seq: seq, ts: Date.now(), pad: pad});
                    this.published[channel] = (this.published[channel] || 0) + 1;
                    this.total += 1;
                    sent += 1;
                }
                if (sent >= count) {
                    resolve({channel: channel, published: count, first_seq: first, last_seq: first + count - 1});
                } else if (rate > 0) {
                    setTimeout(step, Math.max(1, Math.ceil(1000 / rate)));
                } else {
                    setImmediate(step);
                }
            };
            step();
        });
    }
}

function readJson(request) {
    return new Promise((resolve, reject) => {
        let content = '';
        request.setEncoding('utf8');
        request.on('data', chunk => {
            content += chunk;
        });
        request.on('end', () => {
            if (content === '') {
                resolve({});
                return;
            }
            try {
                resolve(JSON.parse(content));
            } catch (e) {
                reject(e);
            }
        });
        request.on('error', reject);
    });
}

function reply(response, status, body) {
    const text = JSON.stringify(body);
    response.writeHead(status, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text)});
    response.end(text);
}

// Returns a request handler for /control/*; `server` provides dropSessions(), stats(), auth
// (an AuthPolicy) and publisher (a Publisher).
function controlHandler(server) {
    return (request, response) => {
        const path = request.url.split('?')[0];
        readJson(request).then(async body => {
            if (request.method === 'POST' && path === '/control/publish') {
                if (typeof body.channel !== 'string' || !(body.count >= 0)) {
                    reply(response, 400, {error: 'channel (string) and count (>= 0) are required'});
                    return;
                }
                const done = server.publisher.publish(body.channel, body.count, body.size || 0, body.rate || 0);
                if (body.wait === false) {
                    reply(response, 202, {channel: body.channel, accepted: body.count});
                } else {
                    reply(response, 200, await done);
                }
            } else if (request.method === 'POST' && path === '/control/drop-sessions') {
                reply(response, 200, {dropped: server.dropSessions()});
            } else if (request.method === 'GET' && path === '/control/stats') {
                const stats = server.stats();
                stats.published = server.publisher.total;
                stats.published_per_channel = server.publisher.published;
                stats.auth = server.auth.snapshot();
                reply(response, 200, stats);
            } else if (request.method === 'POST' && path === '/control/auth') {
                server.auth.configure(body);
                reply(response, 200, server.auth.snapshot());
            } else {
                reply(response, 404, {error: 'unknown control request ' + request.method + ' ' + path});
            }
        }).catch(e => {
            reply(response, 400, {error: String(e && e.message ? e.message : e)});
        });
    };
}

// Listens on options.port (0 = any free port) and prints the READY line the fixtures wait for.
function listen(httpServer, options) {
    httpServer.listen(options.port, options.host, () => {
        const port = httpServer.address().port;
        process.stdout.write('READY ' + port + ' ' + port + '\n');
    });
    const stop = () => {
        httpServer.close();
        process.exit(0);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

// cometd-nodejs-server: remove every session as an expiry would. A held /meta/connect is
// answered (flushed), so the client notices at its next message (unknown session).
function dropCometdSessions(server, sessions) {
    const dropped = Array.from(sessions);
    for (const session of dropped) {
        server._removeServerSession(session, true);
        session._flush();
    }
    return dropped.length;
}

// cometd-nodejs-server: subscriber count per channel over the live sessions.
function cometdSubscriptions(sessions) {
    const subscriptions = {};
    for (const session of sessions) {
        for (const channel of session.subscriptions) {
            subscriptions[channel.name] = (subscriptions[channel.name] || 0) + 1;
        }
    }
    return subscriptions;
}

module.exports = {
    parseOptions, AuthPolicy, AUTH_ERROR, Publisher, controlHandler, listen,
    dropCometdSessions, cometdSubscriptions,
};
