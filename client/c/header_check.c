/*
 * header_check.c: kv.h against the library, and the calls that need no server.
 *
 * Compiled by the test suite with -std=c11 -Wall -Wextra -pedantic -Werror:
 * each function is assigned to a pointer of the exact type of the original's
 * prototype, so a prototype in kv.h that drifts from it fails to compile, and
 * linking against libkv.so checks that the library exports all four.
 *
 * Usage: header_check DEAD_HOST:PORT   (an address where nothing listens)
 * Exit code 0 if every check passed, 1 otherwise.
 */
#include <stdio.h>
#include <string.h>

#include "kv.h"

static int (*const p_init)(char **) = kv_init;
static int (*const p_shutdown)(void) = kv_shutdown;
static int (*const p_get)(char *, char *) = kv_get;
static int (*const p_put)(char *, char *, char *) = kv_put;

#if KV_MAX_KEY_BYTES != 128 || KV_MAX_VALUE_BYTES != 2048
#error "kv.h limits differ from the original's"
#endif

static int failures = 0;

static void expect(const char *what, int expected, int got) {
    if (expected == got) {
        printf("ok: %s (%d)\n", what, got);
    } else {
        printf("FAILED: %s: expected %d, got %d\n", what, expected, got);
        failures++;
    }
}

int main(int argc, char **argv) {
    char value[KV_MAX_VALUE_BYTES + 1];
    char old[KV_MAX_VALUE_BYTES + 1];
    char key[] = "HeaderCheckKey";
    char good_value[] = "HeaderCheckValue";

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: %s DEAD_HOST:PORT\n", argv[0]);
        return 2;
    }

    expect("kv_get before kv_init", -1, p_get(key, value));
    expect("kv_put before kv_init", -1, p_put(key, good_value, old));
    expect("kv_shutdown before kv_init", 0, p_shutdown());

    expect("kv_init(NULL)", -1, p_init(NULL));
    {
        char *empty[] = {NULL};
        expect("kv_init of an empty list", -1, p_init(empty));
    }
    {
        char no_port[] = "localhost";
        char *list[] = {no_port, NULL};
        expect("kv_init of a malformed entry", -1, p_init(list));
    }
    {
        char bad_port[] = "127.0.0.1:99999";
        char *list[] = {argv[1], bad_port, NULL};
        expect("kv_init of a list with a bad port", -1, p_init(list));
    }
    {
        char *list[] = {argv[1], argv[1], NULL};
        expect("kv_init with no server answering", -1, p_init(list));
    }
    expect("kv_get after a failed kv_init", -1, p_get(key, value));

    {
        char bad_key[] = "Invalid[Key]";
        char bad_value[] = "Invalid@Value!";
        expect("kv_get of an invalid key", -1, p_get(bad_key, value));
        expect("kv_put of an invalid key", -1, p_put(bad_key, good_value, old));
        expect("kv_put of an invalid value", -1, p_put(key, bad_value, old));
        expect("kv_get of a NULL key", -1, p_get(NULL, value));
        expect("kv_put of a NULL value", -1, p_put(key, NULL, old));
    }
    expect("kv_shutdown", 0, p_shutdown());

    if (failures != 0) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
