/*
 * kv.h: the C API of libkv.so, the kvs client library.
 *
 * The four functions and their meanings are those of the original system's
 * libkv, so programs written for it run against kvs by relinking:
 *
 *     cargo build --release -p client        # target/release/libkv.so
 *     cc prog.c -Iclient/include -Ltarget/release -lkv \
 *        -Wl,-rpath,"$PWD/target/release" -o prog
 *
 * The library is implemented in client/src/ffi.rs; the prototypes below are
 * checked against it by the test suite (integration/tests/c_client.rs
 * compiles client/c/header_check.c with -Werror, and ffi.rs asserts the
 * functions' types).
 *
 * Every function is safe to call from several threads at once. None aborts
 * the process: an internal error is reported as -1. On success nothing is
 * printed except "Connected to server: HOST:PORT" (stdout) by kv_init; on
 * failure a line goes to stderr.
 *
 * Keys are 1 to 128 bytes of printable ASCII (32 to 126) other than '[' and
 * ']'. Values are 1 to 2048 bytes of ASCII letters, digits, whitespace
 * (space, \t, \n, \f, \r), '.', ',', '_' and '-'. Anything else is refused
 * with -1 before it is sent, and one of the original's messages is printed
 * on stderr:
 *     Invalid key: Keys must be printable ASCII (without '[' or ']') and ≤ 128 bytes
 *     Invalid value: Values must be printable ASCII and ≤ 2048 bytes
 *
 * Environment (read by kv_init):
 *     KVS_TIMEOUT_MS  how long one kv_get or kv_put keeps retrying across
 *                     leader changes before it returns -1 (default 30000)
 *     KVS_CLUSTER_ID  the cluster id sent in the handshake (default: any)
 */

#ifndef KV_H
#define KV_H

#ifdef __cplusplus
extern "C" {
#endif

/* Largest key and value, in bytes (without the terminating NUL). */
#define KV_MAX_KEY_BYTES 128
#define KV_MAX_VALUE_BYTES 2048

/*
 * Connects to the store. server_list is a NULL-terminated array of
 * "host:port" strings, like argv. The servers are tried in order, each given
 * 2 seconds to answer; the first that answers is printed as
 * "Connected to server: HOST:PORT". Later calls follow the leader among all
 * listed servers by themselves.
 *
 * Returns 0 on success; -1 if no server answered, if the list is NULL, empty
 * or malformed, or if the library is already initialized (kv_init twice
 * without kv_shutdown is an error that changes nothing).
 */
int kv_init(char **server_list);

/*
 * Disconnects and frees everything kv_init made. Returns 0. kv_init works
 * again afterwards.
 */
int kv_shutdown(void);

/*
 * Reads key. Returns 0 if it is present, its value copied into value with a
 * terminating NUL (value must hold at least KV_MAX_VALUE_BYTES + 1 = 2049
 * bytes); 1 if it is not present; -1 on failure or an invalid key.
 */
int kv_get(char *key, char *value);

/*
 * Stores value under key, exactly once: a request retried inside the library
 * across a failover is applied once. Returns 0 if the key had a value, which
 * is copied into old_value with its terminating NUL and not one byte more
 * (old_value may be NULL to skip the copy); 1 if it had none; -1 on failure
 * (no leader within KVS_TIMEOUT_MS: the write may or may not have been
 * applied) or an invalid key or value.
 */
int kv_put(char *key, char *value, char *old_value);

#ifdef __cplusplus
}
#endif

#endif /* KV_H */
