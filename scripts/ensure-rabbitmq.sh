#!/usr/bin/env bash
# Make sure RabbitMQ answers on 127.0.0.1:5672; start a locally installed one if it is down.
set -euo pipefail
host=127.0.0.1 port=5672

# --unless-amqp-url (make demo): a BRIDGE_AMQP_URL names the broker to use, maybe another host;
# the local one is then none of our business.
if [[ "${1:-}" == "--unless-amqp-url" && -n "${BRIDGE_AMQP_URL:-}" ]]; then
    echo "rabbitmq: BRIDGE_AMQP_URL is set; not checking for a local broker"
    exit 0
fi

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if answers; then
    echo "rabbitmq: answering on $host:$port"
    exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "rabbitmq: nothing answers on $host:$port and rabbitmq-server is not installed." >&2
    echo "rabbitmq: install it (apt-get install rabbitmq-server) or point the tests at a broker." >&2
    exit 1
fi
echo "rabbitmq: down, starting it with 'rabbitmq-server -detached'"
rabbitmq-server -detached
for _ in $(seq 1 60); do
    if answers && rabbitmqctl -q await_startup >/dev/null 2>&1; then
        echo "rabbitmq: started"
        exit 0
    fi
    sleep 1
done
echo "rabbitmq: did not come up within 60 s; see /var/log/rabbitmq/" >&2
exit 1
