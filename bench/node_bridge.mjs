// The Node reference bridge the benchmark measures ours against: the official CometD
// JavaScript client (cometd + cometd-nodejs-client) and amqplib, as a Node user would write
// it: every message published on a confirm channel with the same properties as ours; confirms
// are pipelined (amqplib's callback per publish) and the socket's drain event is respected.
// Usage: node node_bridge.mjs URL TRANSPORT CHANNEL EXCHANGE AMQP_URL   (prints READY)
import {adapt} from "cometd-nodejs-client";
import {CometD} from "cometd";
import amqp from "amqplib";

adapt();

const [url, transport, channel, exchange, amqpUrl] = process.argv.slice(2);
const endpoint = "bench";

const connection = await amqp.connect(amqpUrl);
const confirms = await connection.createConfirmChannel();

const cometd = new CometD();
for (const type of cometd.getTransportTypes()) {
    if (type !== transport) {
        cometd.unregisterTransport(type);
    }
}
cometd.configure({url: url, logLevel: process.env.BENCH_NODE_LOG || "warn"});

function routingKey(name) {
    return name.replace(/^\//, "").replace(/\//g, ".");
}

let blocked = false;
const waiting = [];
confirms.on("drain", () => {
    blocked = false;
    while (waiting.length && !blocked) {
        publish(waiting.shift());
    }
});

function publish(message) {
    if (blocked) {
        waiting.push(message);
        return;
    }
    const headers = {"cometd-endpoint": endpoint, "cometd-channel": message.channel};
    if (message.id !== undefined) {
        headers["cometd-id"] = String(message.id);
    }
    const ok = confirms.publish(exchange, routingKey(message.channel), Buffer.from(JSON.stringify(message.data)), {
        contentType: "application/json",
        deliveryMode: 2,
        messageId: endpoint + ":" + message.channel + ":i" + message.id,
        timestamp: Math.floor(Date.now() / 1000),
        headers: headers,
        mandatory: true,
    }, err => {
        if (err) {
            console.error("nack", err);
        }
    });
    if (!ok) {
        blocked = true;
    }
}

cometd.handshake(reply => {
    if (!reply.successful) {
        console.error("handshake failed", JSON.stringify(reply));
        process.exit(2);
    }
    cometd.subscribe(channel, publish, sub => {
        if (!sub.successful) {
            console.error("subscribe failed", JSON.stringify(sub));
            process.exit(2);
        }
        console.log("READY " + transport);
    });
});

function stop() {
    cometd.disconnect(() => {
        confirms.waitForConfirms().finally(() => connection.close().finally(() => process.exit(0)));
    });
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
