/*
 * correctness.c: the original system's eleven correctness cases against libkv.
 *
 * Usage: correctness HOST:PORT [HOST:PORT...]
 * Prints each case as the original did; exits 0 if all passed, 1 if any
 * failed, 2 on a usage error. The keys carry the process id, so the program
 * can run again against the same cluster.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kv.h"

static int failures = 0;

/* Prints the outcome of a check and counts a failure. `ok` adds a check beyond the code. */
static void verdict(int expected, int got, int ok) {
    printf("Expected Result: %d, Got: %d\n", expected, got);
    if (expected == got && ok) {
        printf("\u2713 Passed\n\n");
    } else {
        printf("\u2717 Failed\n\n");
        failures++;
    }
}

/* One of the original's numbered cases. */
static void report(int number, const char *description, int expected, int got, int ok) {
    printf("Test Case %d: %s\n", number, description);
    verdict(expected, got, ok);
}

static void extra(const char *description, int expected, int got, int ok) {
    printf("Extra check: %s\n", description);
    verdict(expected, got, ok);
}

int main(int argc, char **argv) {
    char key[64], missing[64];
    char value[KV_MAX_VALUE_BYTES + 1];
    /* Sized to the values this program stores, as the original's callers do:
       the library must write the old value and its NUL, not one byte more. */
    char old[sizeof "TestValue" + 8];
    char first[] = "TestValue";
    char second[] = "NewValue";
    char bad_key[] = "Invalid[Key]";
    char bad_value[] = "Invalid@Value!";
    int rc;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: %s HOST:PORT [HOST:PORT...]\n", argv[0]);
        return 2;
    }
    char **servers = argv + 1; /* NULL-terminated, like the original's list */
    snprintf(key, sizeof key, "TestKey-%ld", (long)getpid());
    snprintf(missing, sizeof missing, "NonExistentKey-%ld", (long)getpid());

    rc = kv_init(servers);
    report(1, "Initialize KV Store", 0, rc, 1);

    rc = kv_put(key, first, old);
    report(2, "PUT valid key-value pair", 1, rc, 1);

    memset(value, 0, sizeof value);
    rc = kv_get(key, value);
    report(3, "GET existing key", 0, rc, strcmp(value, first) == 0);
    printf("Stored Value: %s\n\n", value);

    rc = kv_get(missing, value);
    report(4, "GET non-existent key", 1, rc, 1);

    memset(old, '#', sizeof old);
    rc = kv_put(key, second, old);
    report(5, "Overwrite existing key", 0, rc,
           strcmp(old, first) == 0 && old[sizeof first] == '#');
    printf("Old Value: %s\n\n", old);

    memset(value, 0, sizeof value);
    rc = kv_get(key, value);
    report(6, "GET after overwrite", 0, rc, strcmp(value, second) == 0);
    printf("Updated Value: %s\n\n", value);

    rc = kv_put(bad_key, first, old);
    report(7, "PUT with invalid key (contains '[')", -1, rc, 1);

    rc = kv_put(key, bad_value, old);
    report(8, "PUT with invalid value (contains special characters)", -1, rc, 1);

    rc = kv_shutdown();
    report(9, "Shutdown KV Store", 0, rc, 1);

    rc = kv_init(servers);
    report(10, "Reinitialize KV Store", 0, rc, 1);

    memset(value, 0, sizeof value);
    rc = kv_get(key, value);
    report(11, "GET after restart (check persistence)", 0, rc, strcmp(value, second) == 0);
    printf("Stored Value: %s\n\n", value);

    /* Beyond the original's cases: kv_init twice is an error that changes nothing. */
    rc = kv_init(servers);
    extra("kv_init again without kv_shutdown", -1, rc, 1);
    memset(value, 0, sizeof value);
    rc = kv_get(key, value);
    extra("GET still works after the refused kv_init", 0, rc, strcmp(value, second) == 0);
    rc = kv_shutdown();
    extra("final shutdown", 0, rc, 1);

    if (failures != 0) {
        printf("%d case(s) failed\n", failures);
        return 1;
    }
    printf("All cases passed\n");
    return 0;
}
