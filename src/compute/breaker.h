/* The GPU -> CPU circuit breaker.
 *
 * States and the calls that move between them:
 *   1. CLOSED: work goes to the GPU. breaker_failure counts consecutive failures;
 *      at `threshold` the breaker goes OPEN (opened_at = now). breaker_success resets
 *      the count.
 *   2. OPEN: breaker_allow says no (work runs on the CPU) until `recovery_s` has passed
 *      since opened_at; the first breaker_allow after that goes HALF_OPEN and says yes
 *      to exactly one caller (the trial).
 *   3. HALF_OPEN: while the trial is out every other breaker_allow says no; the trial's
 *      breaker_success closes the breaker, its breaker_failure opens it again
 *      (opened_at = now, a full recovery period).
 * Time comes from an injectable clock so tests step it instead of sleeping. Thread-safe. */
#ifndef QV_COMPUTE_BREAKER_H
#define QV_COMPUTE_BREAKER_H

#include <pthread.h>
#include <stdint.h>

typedef enum { BREAKER_CLOSED = 0, BREAKER_OPEN = 1, BREAKER_HALF_OPEN = 2 } breaker_state;

typedef double (*breaker_clock)(void *arg); /* seconds, monotonic */

typedef struct breaker {
  pthread_mutex_t mu;
  breaker_state state;     /* guarded by mu */
  int consecutive;         /* failures in a row, guarded by mu */
  int trial_out;           /* HALF_OPEN: the trial was handed out, guarded by mu */
  double opened_at;        /* guarded by mu */
  uint64_t opens;          /* times it went OPEN, guarded by mu */
  int threshold;           /* read-only after init */
  double recovery_s;       /* read-only after init */
  breaker_clock clock;     /* read-only after init */
  void *clock_arg;
} breaker;

/* threshold <= 0 means 3, recovery_s <= 0 means 300; clock NULL means CLOCK_MONOTONIC. */
void breaker_init(breaker *b, int threshold, double recovery_s, breaker_clock clock, void *clock_arg);
void breaker_destroy(breaker *b);
/* Whether this unit of work may try the GPU. A yes in HALF_OPEN is the trial: the caller
 * must report it with breaker_success or breaker_failure. */
int breaker_allow(breaker *b);
void breaker_success(breaker *b);
void breaker_failure(breaker *b);
breaker_state breaker_get_state(breaker *b);
uint64_t breaker_opens(breaker *b);
const char *breaker_state_name(breaker_state s);
double breaker_now(breaker *b);
/* CLOCK_MONOTONIC in seconds (the default clock). */
double breaker_monotonic(void *unused);

#endif
