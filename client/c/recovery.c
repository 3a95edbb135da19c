/*
 * recovery.c: the original system's recovery test, in two phases.
 *
 *   recovery put HOST:PORT...   writes RecoveryKey = Yesssir (give it every server)
 *   (kill -9 the leader)
 *   recovery get HOST:PORT...   reads it back (give it the servers left alive)
 *
 * The original split these into recoverytest.c and recoveryresult.c; here
 * one program takes the phase as its first argument, so the test suite can
 * kill the leader between the two runs. Exits 0 if the phase passed, 1 if
 * not, 2 on a usage error.
 */
#include <stdio.h>
#include <string.h>

#include "kv.h"

static char key[] = "RecoveryKey";
static char expected[] = "Yesssir";

/* kv_init with the original's messages; 0 on success. */
static int init(char **servers) {
    printf("Initializing the key-value store\n");
    if (kv_init(servers) != 0) {
        printf("kv_init failed.\n");
        return 1;
    }
    printf("kv_init succeeded.\n");
    return 0;
}

static int put_phase(char **servers) {
    char old[KV_MAX_VALUE_BYTES + 1];
    char value[KV_MAX_VALUE_BYTES + 1];
    int rc;

    if (init(servers) != 0) {
        return 1;
    }
    printf("Putting the key-value pair\n");
    rc = kv_put(key, expected, old);
    if (rc != 0 && rc != 1) {
        printf("kv_put failed: %d\n", rc);
        kv_shutdown();
        return 1;
    }
    printf("Value put successfully\n");
    /* Read it back: the write is acknowledged, so every later reader sees it. */
    memset(value, 0, sizeof value);
    rc = kv_get(key, value);
    kv_shutdown();
    if (rc != 0 || strcmp(value, expected) != 0) {
        printf("Read back failed: %d, \"%s\"\n", rc, value);
        return 1;
    }
    printf("Now kill the leader, then run `recovery get` with a server list that leaves it out\n");
    return 0;
}

static int get_phase(char **servers) {
    char value[KV_MAX_VALUE_BYTES + 1];
    int rc;

    if (init(servers) != 0) {
        return 1;
    }
    memset(value, 0, sizeof value);
    rc = kv_get(key, value);
    kv_shutdown();
    printf("Expected Result: %s, Got: %s\n", expected, rc == 0 ? value : "(nothing)");
    if (rc == 0 && strcmp(value, expected) == 0) {
        printf("\u2705 Passed\n");
        printf("Stored Value: %s\n", value);
        return 0;
    }
    printf("\u274c Failed (kv_get returned %d)\n", rc);
    return 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3) {
        fprintf(stderr, "usage: %s put|get HOST:PORT [HOST:PORT...]\n", argv[0]);
        return 2;
    }
    char **servers = argv + 2; /* NULL-terminated, like argv */
    if (strcmp(argv[1], "put") == 0) {
        return put_phase(servers);
    }
    if (strcmp(argv[1], "get") == 0) {
        return get_phase(servers);
    }
    fprintf(stderr, "unknown phase %s: use put or get\n", argv[1]);
    return 2;
}
