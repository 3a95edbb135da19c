/*
 * perf.c: the original system's performance test against libkv.
 *
 * Usage: perf [-n OPS] [-k KEYS] [-t THREADS] [-w uniform|hotcold|both] HOST:PORT...
 *   -n  operations per workload (default 1000)
 *   -k  distinct keys (default 1000)
 *   -t  client threads sharing the library (default 1, as the original)
 *   -w  workload (default both)
 *
 * Workloads: keys chosen uniformly at random; and hot/cold, where 90% of the
 * requests go to the hottest 10% of the keys. Each operation is a kv_put or a
 * kv_get with equal odds. For each workload one line is printed:
 *
 *   NAME: OPS ops in NS ns, throughput = X ops/sec, avg latency = Y µs, p99 latency = Z µs, errors = E
 *
 * where an error is a call that returned -1. Exits 0 if every workload ran
 * without errors, 1 otherwise, 2 on a usage error.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kv.h"

enum workload { UNIFORM, HOT_COLD };

struct worker {
    enum workload workload;
    int keys;
    int ops;
    uint64_t seed;
    int64_t *latencies_ns; /* one per operation */
    int errors;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* xorshift64*: a small per-thread generator (rand() is not thread-safe). */
static uint64_t next_random(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 2685821657736338717ULL;
}

static int pick_key(struct worker *w) {
    if (w->workload == UNIFORM) {
        return (int)(next_random(&w->seed) % (uint64_t)w->keys);
    }
    int hot = w->keys / 10 > 0 ? w->keys / 10 : 1;
    int cold = w->keys - hot;
    if (cold == 0 || next_random(&w->seed) % 100 < 90) {
        return (int)(next_random(&w->seed) % (uint64_t)hot);
    }
    return hot + (int)(next_random(&w->seed) % (uint64_t)cold);
}

static void *run_worker(void *arg) {
    struct worker *w = arg;
    char key[64], value[KV_MAX_VALUE_BYTES + 1], old[KV_MAX_VALUE_BYTES + 1];
    for (int i = 0; i < w->ops; i++) {
        int k = pick_key(w);
        int is_put = next_random(&w->seed) % 2 == 0;
        snprintf(key, sizeof key, "perf-key-%d", k);
        int64_t start = now_ns();
        int rc;
        if (is_put) {
            snprintf(value, sizeof value, "value-%d-%d", k, i);
            rc = kv_put(key, value, old);
        } else {
            rc = kv_get(key, value);
        }
        w->latencies_ns[i] = now_ns() - start;
        if (rc == -1) {
            w->errors++;
        }
    }
    return NULL;
}

static int compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Runs one workload; prints its line; returns its error count (or -1). */
static int run(enum workload workload, const char *name, int ops, int keys, int threads) {
    int64_t *latencies = calloc((size_t)ops, sizeof *latencies);
    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    if (latencies == NULL || workers == NULL || ids == NULL) {
        fprintf(stderr, "out of memory\n");
        free(latencies), free(workers), free(ids);
        return -1;
    }
    int offset = 0;
    for (int t = 0; t < threads; t++) {
        workers[t].workload = workload;
        workers[t].keys = keys;
        workers[t].ops = ops / threads + (t < ops % threads ? 1 : 0);
        workers[t].seed = ((uint64_t)now_ns() ^ ((uint64_t)getpid() << 20)) + 0x9E3779B97F4A7C15ULL * (uint64_t)(t + 1);
        workers[t].latencies_ns = latencies + offset;
        offset += workers[t].ops;
    }

    int64_t start = now_ns();
    int started = 0;
    for (; started < threads; started++) {
        if (pthread_create(&ids[started], NULL, run_worker, &workers[started]) != 0) {
            fprintf(stderr, "cannot start thread %d\n", started);
            break;
        }
    }
    for (int t = 0; t < started; t++) {
        pthread_join(ids[t], NULL);
    }
    int64_t elapsed = now_ns() - start;

    int errors = 0, done = 0;
    for (int t = 0; t < started; t++) {
        errors += workers[t].errors;
        done += workers[t].ops;
    }
    if (started < threads) {
        errors += ops - done;
    }
    qsort(latencies, (size_t)done, sizeof *latencies, compare_i64);
    double total_us = 0;
    for (int i = 0; i < done; i++) {
        total_us += (double)latencies[i] / 1000.0;
    }
    double avg_us = done > 0 ? total_us / done : 0.0;
    /* p99: the smallest latency at or above 99% of the operations. */
    int p99_index = done > 0 ? (int)((99LL * done + 99) / 100) - 1 : 0;
    double p99_us = done > 0 ? (double)latencies[p99_index] / 1000.0 : 0.0;
    double throughput = elapsed > 0 ? (double)done * 1e9 / (double)elapsed : 0.0;

    printf("%s: %d ops in %lld ns, throughput = %.2f ops/sec, avg latency = %.2f \u00b5s, "
           "p99 latency = %.2f \u00b5s, errors = %d\n",
           name, done, (long long)elapsed, throughput, avg_us, p99_us, errors);
    free(latencies), free(workers), free(ids);
    return errors;
}

static int positive(const char *text, const char *what) {
    char *end;
    long n = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || n < 1 || n > 100000000) {
        fprintf(stderr, "%s must be a positive number, not %s\n", what, text);
        exit(2);
    }
    return (int)n;
}

int main(int argc, char **argv) {
    int ops = 1000, keys = 1000, threads = 1;
    const char *which = "both";
    int opt;

    setvbuf(stdout, NULL, _IOLBF, 0);
    while ((opt = getopt(argc, argv, "n:k:t:w:")) != -1) {
        switch (opt) {
        case 'n': ops = positive(optarg, "-n"); break;
        case 'k': keys = positive(optarg, "-k"); break;
        case 't': threads = positive(optarg, "-t"); break;
        case 'w': which = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-n OPS] [-k KEYS] [-t THREADS] [-w uniform|hotcold|both] HOST:PORT...\n",
                    argv[0]);
            return 2;
        }
    }
    int uniform = strcmp(which, "uniform") == 0 || strcmp(which, "both") == 0;
    int hotcold = strcmp(which, "hotcold") == 0 || strcmp(which, "both") == 0;
    if ((!uniform && !hotcold) || optind >= argc) {
        fprintf(stderr, "usage: %s [-n OPS] [-k KEYS] [-t THREADS] [-w uniform|hotcold|both] HOST:PORT...\n",
                argv[0]);
        return 2;
    }
    if (threads > ops) {
        threads = ops;
    }
    /* The servers: the operands, which end at argv's NULL. */
    if (kv_init(argv + optind) != 0) {
        printf("kv_init failed\n");
        return 1;
    }
    int failed = 0;
    if (uniform) {
        printf("\nPerformance Test: Uniformly Random Distribution\n");
        failed |= run(UNIFORM, "Uniform Random", ops, keys, threads) != 0;
    }
    if (hotcold) {
        printf("\nPerformance Test: Hot/Cold Distribution (10%% hot, 90%% of requests on hot keys)\n");
        failed |= run(HOT_COLD, "Hot/Cold", ops, keys, threads) != 0;
    }
    kv_shutdown();
    return failed ? 1 : 0;
}
