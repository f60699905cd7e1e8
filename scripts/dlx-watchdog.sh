#!/usr/bin/env bash
# Restarts RabbitMQ 3.10 dead-letter workers that hold a forward for too long.
#
#   scripts/dlx-watchdog.sh [--once] [--older-than SECONDS] [--every SECONDS] [NODE...]
#
# Inqubo's retry delays are quorum queues that dead-letter at least once: a worker process per
# queue forwards expired retries to the next tier or the step's queue and waits for the
# confirm. On RabbitMQ 3.10.8, after a cluster node is lost for good, such a worker can keep a
# stale client for the step's queue: every forward is rejected and re-sent, and the retries
# wait until the node comes back. Restarting the worker (the queue starts a new one at once)
# forwards them. Nothing is lost: forwards are settled only once confirmed, so a restart can
# only send a retry twice. See docs/reliability.md.
#
# NODE is a RabbitMQ node name (default: the local node). Run it on a broker host with the
# Erlang cookie (as root or rabbitmq). INQUBO_RABBITMQCTL overrides the rabbitmqctl command
# (scripts/cluster.sh uses it to reach its private nodes).
set -euo pipefail

older_than=30
every=10
once=false
nodes=()
while [ $# -gt 0 ]; do
    case "$1" in
    --once) once=true ;;
    --older-than) older_than=$2; shift ;;
    --every) every=$2; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) nodes+=("$1") ;;
    esac
    shift
done
ctl=${INQUBO_RABBITMQCTL:-rabbitmqctl}

# For every dead-letter worker on the node: if a forward has waited longer than the limit,
# kill the worker and report its queue.
read -r -d '' check <<ERLANG || true
Limit = ${older_than} * 1000,
Now = erlang:system_time(millisecond),
Stuck = fun(P) ->
    case catch rabbit_fifo_dlx_worker:format_status(normal, [[], sys:get_state(P, 2000)]) of
        [{data, [{"State", #{pendings := Pendings, queue_ref := {resource, _, queue, Queue}}}]}] ->
            Old = [C || #{consumed_at := C} <- maps:values(Pendings), Now - C > Limit],
            case Old of
                [] -> [];
                _ -> exit(P, kill), [{Queue, length(Old)}]
            end;
        _ -> []
    end
end,
lists:append([Stuck(P) || {_, P, _, _} <- supervisor:which_children(rabbit_fifo_dlx_sup)]).
ERLANG

check_node() {
    local args=()
    [ -n "${1:-}" ] && args=(-n "$1")
    local out
    if ! out=$($ctl "${args[@]}" eval "$check" 2>/dev/null); then
        return 0 # a node that is down has no workers to restart
    fi
    if [ "$out" != "[]" ]; then
        echo "$(date +%T) ${1:-local node}: restarted dead-letter workers (queue, forwards held): $out"
    fi
}

while true; do
    if [ ${#nodes[@]} -eq 0 ]; then
        check_node ""
    else
        for node in "${nodes[@]}"; do check_node "$node"; done
    fi
    $once && exit 0
    sleep "$every"
done
