/* The few kernel types the sensor's programs read, with only the fields they read. Every struct is
 * marked preserve_access_index, so clang records each access as a CO-RE relocation and the loader
 * moves it to where the running kernel's BTF (/sys/kernel/btf/vmlinux) says the field is: no
 * vmlinux.h, and no dependence on one kernel's layout. */
#ifndef BANNIN_KERNEL_H
#define BANNIN_KERNEL_H

#include <linux/types.h>

#define CORE __attribute__((preserve_access_index))

typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
} CORE;

struct qstr {
	__u32 len;
	const unsigned char *name;
} CORE;

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} CORE;

struct vfsmount {
	struct dentry *mnt_root;
} CORE;

/* fs/mount.h: the vfsmount a path names is embedded in a struct mount. */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} CORE;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} CORE;

struct super_block {
	__u32 s_dev;
} CORE;

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} CORE;

struct file {
	struct path f_path;
	struct inode *f_inode;
} CORE;

struct fs_struct {
	struct path pwd;
} CORE;

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	struct file *exe_file;
} CORE;

struct thread_info {
	__u32 status;
} CORE;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} CORE;

struct files_struct {
	struct fdtable *fdt;
} CORE;

/* x86_64: a syscall's arguments, its number, as the kernel saved them at entry. */
struct pt_regs {
	unsigned long r10;
	unsigned long r8;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
} CORE;

struct task_struct {
	struct thread_info thread_info;
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	char comm[16];
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	const struct cred *real_cred;
	struct mm_struct *mm;
	struct fs_struct *fs;
	struct files_struct *files;
} CORE;

struct linux_binprm {
	const char *filename;
} CORE;

struct in6_addr {
	__u8 s6_addr[16];
} CORE;

struct sock_common {
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} CORE;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} CORE;

struct tcp_sock {
	__u64 bytes_received;
	__u64 bytes_acked;
} CORE;

#endif
