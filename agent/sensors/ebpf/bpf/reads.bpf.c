// SPDX-License-Identifier: GPL-2.0
/* The file sensor's byte counter: how many bytes each process read from each watched export.
 *
 * fanotify tells the agent that a process read an export but not how much. This program runs as
 * each system call returns (the BTF tracepoint sys_exit) and, for the calls that read a file,
 * takes the file from the calling process's descriptor table and the bytes moved from the
 * return value: read, pread64, readv, preadv, preadv2, sendfile (to a file, socket or pipe),
 * splice and copy_file_range (what cp uses). A file mapped into memory is read by page faults,
 * which no call returns: an mmap of a watched file marks the reader's count as incomplete. Reads
 * no system call returns (io_uring, 32-bit processes) are not counted, so such a reader has no
 * count at all, never a wrong one. (fentry/fexit on the kernel's read functions would cost only
 * the reads, but kernels may refuse them to tracers, as the machines this was built on do, while
 * BTF tracepoints load.) The syscall numbers and registers are x86_64's: on another
 * architecture the CO-RE relocations fail and bytes are not counted.
 *
 * `watched` holds the exports the agent watches, keyed by the kernel's (device, inode) with tgid
 * 0, so every read on the host costs one hash lookup after a few reads of the descriptor table.
 * The agent learns a file's key as the kernel spells it (btrfs and overlayfs report other device
 * numbers to stat) by reading zero bytes from it with pread64 on the thread it names in `agent`:
 * that read writes the key to `learned`. `read_bytes` adds up the bytes per (device, inode,
 * tgid); a reader the kernel could not add to it is counted in `lost`. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "kernel.h"

char LICENSE[] SEC("license") = "GPL";

struct read_key {
	__u64 ino;
	__u32 dev;
	__u32 tgid;
};

struct read_count {
	__u64 bytes;
	/* Non-zero once the reader mapped the file: its page faults are not counted. */
	__u64 mapped;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct read_key);
	__type(value, __u8);
} watched SEC(".maps");

/* Least recently used first out: readers the agent has reported (it removes their counts as it
 * reports them) or long idle. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct read_key);
	__type(value, struct read_count);
} read_bytes SEC(".maps");

/* [0]: the agent thread (pid_tgid) whose zero-byte reads teach it a file's key. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} agent SEC(".maps");

/* [0]: the key of the file the agent thread last read zero bytes from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct read_key);
} learned SEC(".maps");

/* [0]: readers of watched files that `read_bytes` had no room for. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* The file comes from bpf_probe_read_kernel, so the verifier does not know its type: its fields
 * are read the same way. */
static __always_inline struct read_key key_of(struct file *file)
{
	struct read_key key = {};
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	key.ino = BPF_CORE_READ(inode, i_ino);
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	return key;
}

/* The agent's own zero-byte read: remember the file's key for it. */
static __always_inline void learn(struct read_key *key)
{
	__u32 zero = 0;
	__u64 *thread = bpf_map_lookup_elem(&agent, &zero);
	if (!thread || *thread != bpf_get_current_pid_tgid())
		return;
	bpf_map_update_elem(&learned, &zero, key, BPF_ANY);
}

static __always_inline void count(struct file *file, long moved, __u64 mapped, int learning)
{
	if (!file)
		return;
	struct read_key key = key_of(file);
	if (learning)
		learn(&key);
	if (!bpf_map_lookup_elem(&watched, &key))
		return;
	if (moved <= 0 && !mapped)
		return;
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	struct read_count *seen = bpf_map_lookup_elem(&read_bytes, &key);
	if (!seen) {
		struct read_count fresh = {};
		long err = bpf_map_update_elem(&read_bytes, &key, &fresh, BPF_NOEXIST);
		seen = bpf_map_lookup_elem(&read_bytes, &key);
		if (!seen) {
			if (err) {
				__u32 zero = 0;
				__u64 *lost_count = bpf_map_lookup_elem(&lost, &zero);
				if (lost_count)
					__sync_fetch_and_add(lost_count, 1);
			}
			return;
		}
	}
	if (moved > 0)
		__sync_fetch_and_add(&seen->bytes, moved);
	if (mapped)
		seen->mapped = 1;
}

/* x86_64 system call numbers. */
#define NR_read 0
#define NR_mmap 9
#define NR_pread64 17
#define NR_readv 19
#define NR_sendfile 40
#define NR_splice 275
#define NR_preadv 295
#define NR_copy_file_range 326
#define NR_preadv2 327
/* thread_info.status: the task is in a 32-bit system call, whose numbers are others. */
#define TS_COMPAT 0x0002

/* The file open on descriptor `fd` of the current process. */
static __always_inline struct file *file_of(struct task_struct *task, __u32 fd)
{
	struct fdtable *fdt = task->files->fdt;
	if (fd >= fdt->max_fds)
		return 0;
	/* The descriptor array is a pointer to pointers, which the verifier does not walk. */
	struct file **fds = fdt->fd;
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

/* A typed (BTF) tracepoint: its arguments and the current task are pointers the program may
 * read directly. */
SEC("tp_btf/sys_exit")
int sys_exit(unsigned long long *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long ret = (long)ctx[1];
	long nr = regs->orig_ax;
	__u32 fd;
	int mapped = 0, learning = 0;
	switch (nr) {
	case NR_read:
	case NR_readv:
	case NR_preadv:
	case NR_preadv2:
	case NR_splice:
	case NR_copy_file_range:
		fd = regs->di;
		break;
	case NR_pread64:
		fd = regs->di;
		learning = regs->dx == 0;
		break;
	case NR_sendfile:
		fd = regs->si;
		break;
	case NR_mmap:
		/* A mapping's address, not an error; no descriptor for an anonymous one. */
		if (ret < 0 && ret > -4096)
			return 0;
		fd = regs->r8;
		mapped = 1;
		ret = 0;
		break;
	default:
		return 0;
	}
	if (ret <= 0 && !mapped && !learning)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	if (task->thread_info.status & TS_COMPAT)
		return 0;
	count(file_of(task, fd), ret, mapped, learning);
	return 0;
}
