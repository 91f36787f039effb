'use strict';
// Adds an "hmac" mode to the harness's AuthPolicy (control.js) without editing the harness:
// preload it with NODE_OPTIONS="--require <this file>" and the servers' own
// require('./control') gets the patched class (same module cache entry).
//
// POST /control/auth {"mode": "hmac", "key": "<hex>"} then accepts any token
// "<n>.<expires_ms>.<hex HMAC-SHA256(key, '<n>.<expires_ms>')>" until expires_ms (0 = never),
// like a resource server checking the tokens of a real authorization server
// (tests/integration/auth/token_server.py issues them). Several tokens are valid at once, so a
// client that refreshes before expiry is never rejected; one that lets a token expire is
// rejected with 401::Authentication invalid and loses its session, as on Salesforce.

const crypto = require('crypto');
const path = require('path');
const control = require(path.join(__dirname, 'control.js'));

const proto = control.AuthPolicy.prototype;
const baseConfigure = proto.configure;
const baseAccepts = proto.accepts;
const baseSnapshot = proto.snapshot;

function bearer(headerValue, message) {
    if (typeof headerValue === 'string' && headerValue.startsWith('Bearer ')) {
        return headerValue.slice('Bearer '.length).trim();
    }
    const ext = message && message.ext;
    if (ext && ext.auth && typeof ext.auth.token === 'string') {
        return ext.auth.token;
    }
    return null;
}

proto.configure = function (body) {
    if (body.mode !== 'hmac') {
        this.hmacKey = null;
        baseConfigure.call(this, body);
        return;
    }
    this.mode = 'hmac';
    this.hmacKey = Buffer.from(String(body.key), 'hex');
    this.accepted = 0;
    this.expiredSeen = 0;
};

proto.accepts = function (headerValue, message) {
    if (this.mode !== 'hmac') {
        return baseAccepts.call(this, headerValue, message);
    }
    const token = bearer(headerValue, message);
    const parts = token === null ? [] : token.split('.');
    let ok = false;
    if (parts.length === 3) {
        const expected = crypto.createHmac('sha256', this.hmacKey)
            .update(parts[0] + '.' + parts[1]).digest('hex');
        const signed = expected.length === parts[2].length &&
            crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(parts[2]));
        const expires = Number(parts[1]);
        const fresh = expires === 0 || Date.now() < expires;
        if (signed && !fresh) {
            this.expiredSeen += 1;
        }
        ok = signed && fresh;
    }
    if (ok) {
        this.accepted += 1;
    } else {
        this.rejected += 1;
    }
    return ok;
};

proto.snapshot = function () {
    const snapshot = baseSnapshot.call(this);
    if (this.mode === 'hmac') {
        snapshot.accepted = this.accepted;
        snapshot.expired = this.expiredSeen;
    }
    return snapshot;
};
