/* The records the programs hand the agent through their ring buffers. agent/sensors/ebpf/records.rs
 * decodes them from bytes, field by field, at the offsets written in the comments. */
#ifndef BANNIN_RECORDS_H
#define BANNIN_RECORDS_H

#include <linux/types.h>

#define PATH_MAX 4096
#define NAME_MAX 255
/* Directories walked up from a file before its path is cut. */
#define PATH_DEPTH 64
#define ARGS_MAX 4095
#define RECORD_MAX 16384

#define RECORD_EXEC 1
#define RECORD_FORK 2
#define RECORD_EXIT 3

#define FLAG_EXE_TRUNCATED 1
#define FLAG_CWD_TRUNCATED 2
#define FLAG_ARGS_TRUNCATED 4

/* Followed by exe_len bytes of executable path, cwd_len of working directory and args_len of
 * NUL-separated arguments (exec records only). */
struct process_record {
	__u32 kind;        /* 0 */
	__u32 pid;         /* 4: the thread group id, what user space calls the pid */
	__u32 ppid;        /* 8 */
	__u32 uid;         /* 12: real uid */
	__u64 started_ns;  /* 16: start_boottime, nanoseconds after boot */
	__u32 code;        /* 24: exit records: the wait status */
	__u16 exe_len;     /* 28 */
	__u16 cwd_len;     /* 30 */
	__u16 args_len;    /* 32 */
	__u8 flags;        /* 34 */
	__u8 pad;          /* 35 */
	char comm[16];     /* 36 */
};
#define HEADER_LEN 56

#define RECORD_OPEN 1
#define RECORD_CLOSE 2

/* One TCP connection this host opened: at its handshake (open) and when it closes. */
struct conn_record {
	__u32 kind;           /* 0 */
	__u32 pid;            /* 4: the connecting process */
	__u32 uid;            /* 8 */
	__u16 family;         /* 12: AF_INET or AF_INET6 */
	__u16 local_port;     /* 14: host order */
	__u64 started_ns;     /* 16: the process's start_boottime */
	__u64 sock;           /* 24: the socket's kernel address, which names the connection */
	__u64 bytes_sent;     /* 32: close records: bytes acknowledged by the peer */
	__u64 bytes_received; /* 40 */
	__u8 local_addr[16];  /* 48: 4 bytes for AF_INET */
	__u8 remote_addr[16]; /* 64 */
	__u16 remote_port;    /* 80: host order */
	__u16 old_state;      /* 82: close records: the state it closed from */
	char comm[16];        /* 84 */
	__u32 pad;            /* 100 */
};
#define CONN_RECORD_LEN 104

#endif
