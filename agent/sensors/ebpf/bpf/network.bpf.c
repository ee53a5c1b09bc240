// SPDX-License-Identifier: GPL-2.0
/* The network sensor's program: every TCP connection this host opens, named by the process that
 * called connect(), with its two ends at the handshake and its byte counts when it closes.
 *
 * The kernel moves a socket to SYN_SENT inside connect(), in the calling process's context: the
 * program remembers that process by socket in a bounded hash map, and reports the connection at
 * ESTABLISHED (open) and at CLOSE (with bytes). Sockets never seen in SYN_SENT (accepted ones) are
 * ignored. A record without room in the ring buffer, or a connection without room in the map, is
 * counted in `lost` for the agent to report. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "kernel.h"
#include "records.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} events SEC(".maps");

/* [0]: records the ring buffer had no room for; [1]: connections the owner map had no room for. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

struct owner {
	__u32 pid;
	__u32 uid;
	__u64 started_ns;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

static __always_inline void count_loss(__u32 which)
{
	__u64 *count = bpf_map_lookup_elem(&lost, &which);
	if (count)
		__sync_fetch_and_add(count, 1);
}

static __always_inline void report(struct sock *sk, struct owner *owner, __u32 kind, int oldstate)
{
	struct conn_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_loss(0);
		return;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->pid = owner->pid;
	r->uid = owner->uid;
	r->started_ns = owner->started_ns;
	__builtin_memcpy(r->comm, owner->comm, sizeof(r->comm));
	r->sock = (__u64)sk;
	r->old_state = oldstate;
	r->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	r->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	r->remote_port = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (r->family == AF_INET6) {
		BPF_CORE_READ_INTO(&r->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&r->remote_addr, sk, __sk_common.skc_v6_daddr);
	} else {
		BPF_CORE_READ_INTO((__u32 *)r->local_addr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)r->remote_addr, sk, __sk_common.skc_daddr);
	}
	if (kind == RECORD_CLOSE) {
		struct tcp_sock *tp = (struct tcp_sock *)sk;
		r->bytes_sent = BPF_CORE_READ(tp, bytes_acked);
		r->bytes_received = BPF_CORE_READ(tp, bytes_received);
	}
	bpf_ringbuf_submit(r, 0);
}

/* inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate) */
SEC("raw_tracepoint/inet_sock_set_state")
int inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int oldstate = (int)ctx->args[1];
	int newstate = (int)ctx->args[2];
	__u64 key = (__u64)sk;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;

	if (newstate == TCP_SYN_SENT) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct owner owner = {};
		owner.pid = bpf_get_current_pid_tgid() >> 32;
		owner.uid = BPF_CORE_READ(task, real_cred, uid.val);
		owner.started_ns = BPF_CORE_READ(task, group_leader, start_boottime);
		bpf_get_current_comm(&owner.comm, sizeof(owner.comm));
		if (bpf_map_update_elem(&owners, &key, &owner, BPF_ANY))
			count_loss(1);
		return 0;
	}
	if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	struct owner *owner = bpf_map_lookup_elem(&owners, &key);
	if (!owner)
		return 0;
	if (newstate == TCP_ESTABLISHED) {
		if (oldstate == TCP_SYN_SENT)
			report(sk, owner, RECORD_OPEN, oldstate);
		return 0;
	}
	report(sk, owner, RECORD_CLOSE, oldstate);
	bpf_map_delete_elem(&owners, &key);
	return 0;
}
