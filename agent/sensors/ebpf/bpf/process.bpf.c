// SPDX-License-Identifier: GPL-2.0
/* The process sensor's programs: every exec with its executable, working directory and arguments
 * read from the kernel at exec time, every fork of a new process, and every process exit with its
 * code. Records go to one bounded ring buffer; a record that finds no room is counted in `lost`,
 * which the agent reads and reports, so no loss is silent.
 *
 * Attached as raw tracepoints (no tracefs needed); every kernel struct is read with CO-RE. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "kernel.h"
#include "records.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* [0]: records the ring buffer had no room for. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* An exec record is built here, then copied out at its real length: too large for the stack, and
 * programs on one CPU never interleave (tracepoint programs run with preemption off). */
struct scratch {
	char record[RECORD_MAX];
	char path[2 * PATH_MAX];
	__s32 pos;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

static __always_inline void count_loss(void)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&lost, &zero);
	if (count)
		__sync_fetch_and_add(count, 1);
}

/* Writes the path of (mnt, dentry) at the end of s->path[0..PATH_MAX), walking up to the global
 * root across mounts as d_path does; returns where it starts. Sets *truncated when it gave up
 * early. The position lives in map memory, which the verifier does not track value by value, so it
 * checks the loop's body once instead of once per possible position. */
static __always_inline int build_path(struct scratch *s, struct vfsmount *vfs,
				      struct dentry *dentry, __u8 *truncated)
{
	struct mount *mnt = (struct mount *)((char *)vfs - bpf_core_field_offset(struct mount, mnt));
	int depth;

	s->pos = PATH_MAX;
	for (depth = 0; depth < PATH_DEPTH; depth++) {
		struct dentry *root = BPF_CORE_READ(mnt, mnt.mnt_root);
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

		if (dentry == root || dentry == parent) {
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
			if (up == mnt || dentry != root)
				break;
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			continue;
		}
		__u32 len = BPF_CORE_READ(dentry, d_name.len);
		const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
		__s32 pos = s->pos;
		if (len > NAME_MAX || pos < (__s32)len + 2 || pos > PATH_MAX) {
			*truncated = 1;
			break;
		}
		pos -= len;
		bpf_probe_read_kernel(&s->path[pos & (PATH_MAX - 1)], len & NAME_MAX, name);
		pos -= 1;
		s->path[pos & (PATH_MAX - 1)] = '/';
		s->pos = pos;
		dentry = parent;
	}
	if (depth == PATH_DEPTH)
		*truncated = 1;
	if (s->pos == PATH_MAX) {
		s->pos = PATH_MAX - 1;
		s->path[PATH_MAX - 1] = '/';
	}
	return s->pos;
}

static __always_inline void fill_header(struct process_record *r, struct task_struct *task,
					__u32 kind)
{
	r->kind = kind;
	r->pid = BPF_CORE_READ(task, tgid);
	r->ppid = BPF_CORE_READ(task, real_parent, tgid);
	r->uid = BPF_CORE_READ(task, real_cred, uid.val);
	r->started_ns = BPF_CORE_READ(task, start_boottime);
	r->code = 0;
	r->exe_len = 0;
	r->cwd_len = 0;
	r->args_len = 0;
	r->flags = 0;
	r->pad = 0;
	BPF_CORE_READ_STR_INTO(&r->comm, task, comm);
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm): the new
 * program is mapped and its arguments are on its stack. */
SEC("raw_tracepoint/sched_process_exec")
int process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	struct process_record *r = (struct process_record *)s->record;
	fill_header(r, task, RECORD_EXEC);

	__u8 truncated = 0;
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	__u32 exe_len = 0;
	if (exe) {
		int pos = build_path(s, BPF_CORE_READ(exe, f_path.mnt),
				     BPF_CORE_READ(exe, f_path.dentry), &truncated);
		exe_len = (PATH_MAX - pos) & (PATH_MAX - 1);
		bpf_probe_read_kernel(s->record + HEADER_LEN, exe_len,
				      &s->path[pos & (PATH_MAX - 1)]);
	}
	if (truncated)
		r->flags |= FLAG_EXE_TRUNCATED;
	r->exe_len = exe_len;

	truncated = 0;
	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	__u32 cwd_len = 0;
	if (fs) {
		int pos = build_path(s, BPF_CORE_READ(fs, pwd.mnt),
				     BPF_CORE_READ(fs, pwd.dentry), &truncated);
		cwd_len = (PATH_MAX - pos) & (PATH_MAX - 1);
		bpf_probe_read_kernel(s->record + HEADER_LEN + exe_len, cwd_len,
				      &s->path[pos & (PATH_MAX - 1)]);
	}
	if (truncated)
		r->flags |= FLAG_CWD_TRUNCATED;
	r->cwd_len = cwd_len;

	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	__u64 args_len = end > start ? end - start : 0;
	if (args_len > ARGS_MAX) {
		args_len = ARGS_MAX;
		r->flags |= FLAG_ARGS_TRUNCATED;
	}
	__u32 at = HEADER_LEN + exe_len + cwd_len;
	args_len &= ARGS_MAX;
	if (bpf_probe_read_user(s->record + at, args_len, (const void *)start) != 0)
		args_len = 0;
	r->args_len = args_len;

	__u32 size = at + args_len;
	if (bpf_ringbuf_output(&events, s->record, size & (RECORD_MAX - 1), 0))
		count_loss();
	return 0;
}

/* sched_process_fork(struct task_struct *parent, struct task_struct *child): a new process (not a
 * thread) runs its parent's program until it execs. */
SEC("raw_tracepoint/sched_process_fork")
int process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	struct process_record *r = bpf_ringbuf_reserve(&events, HEADER_LEN, 0);
	if (!r) {
		count_loss();
		return 0;
	}
	fill_header(r, child, RECORD_FORK);
	/* At fork, the child's parent is the forking process itself (or its parent, for CLONE_PARENT). */
	bpf_ringbuf_submit(r, 0);
	return 0;
}

/* sched_process_exit(struct task_struct *p, ...): the exit code is set by now. Threads exit too;
 * only the thread group leader's exit is the process's. */
SEC("raw_tracepoint/sched_process_exit")
int process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0;
	struct process_record *r = bpf_ringbuf_reserve(&events, HEADER_LEN, 0);
	if (!r) {
		count_loss();
		return 0;
	}
	fill_header(r, task, RECORD_EXIT);
	r->code = BPF_CORE_READ(task, exit_code);
	bpf_ringbuf_submit(r, 0);
	return 0;
}
