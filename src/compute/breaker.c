/* The circuit breaker's state machine; the states and transitions are listed in
 * breaker.h. A failing GPU costs each request one failed try at most `threshold` times
 * in a row, then nothing until the recovery period ends, then one trial. */
#include "compute/breaker.h"

#include "base/clock.h"

double breaker_monotonic(void *unused) {
  (void)unused;
  return qv_monotonic_s();
}

void breaker_init(breaker *b, int threshold, double recovery_s, breaker_clock clock, void *clock_arg) {
  pthread_mutex_init(&b->mu, NULL);
  b->state = BREAKER_CLOSED;
  b->consecutive = 0;
  b->trial_out = 0;
  b->opened_at = 0;
  b->opens = 0;
  b->threshold = threshold > 0 ? threshold : 3;
  b->recovery_s = recovery_s > 0 ? recovery_s : 300;
  b->clock = clock ? clock : breaker_monotonic;
  b->clock_arg = clock_arg;
}

void breaker_destroy(breaker *b) { pthread_mutex_destroy(&b->mu); }

double breaker_now(breaker *b) { return b->clock(b->clock_arg); }

int breaker_allow(breaker *b) {
  pthread_mutex_lock(&b->mu);
  int yes = 0;
  switch (b->state) {
  case BREAKER_CLOSED:
    yes = 1;
    break;
  case BREAKER_OPEN:
    if (b->clock(b->clock_arg) - b->opened_at >= b->recovery_s) {
      b->state = BREAKER_HALF_OPEN;
      b->trial_out = 1;
      yes = 1;
    }
    break;
  case BREAKER_HALF_OPEN:
    if (!b->trial_out) { /* unreachable by the transitions above; kept total */
      b->trial_out = 1;
      yes = 1;
    }
    break;
  }
  pthread_mutex_unlock(&b->mu);
  return yes;
}

void breaker_success(breaker *b) {
  pthread_mutex_lock(&b->mu);
  b->consecutive = 0;
  if (b->state == BREAKER_HALF_OPEN) {
    b->state = BREAKER_CLOSED;
    b->trial_out = 0;
  }
  pthread_mutex_unlock(&b->mu);
}

void breaker_failure(breaker *b) {
  pthread_mutex_lock(&b->mu);
  /* OPEN: a late report from work let through before it opened changes nothing; the
   * recovery period runs from the opening. */
  if (b->state == BREAKER_OPEN) {
    pthread_mutex_unlock(&b->mu);
    return;
  }
  if (b->state == BREAKER_HALF_OPEN || ++b->consecutive >= b->threshold) {
    b->opens++;
    b->state = BREAKER_OPEN;
    b->opened_at = b->clock(b->clock_arg);
    b->trial_out = 0;
    b->consecutive = 0;
  }
  pthread_mutex_unlock(&b->mu);
}

breaker_state breaker_get_state(breaker *b) {
  pthread_mutex_lock(&b->mu);
  breaker_state s = b->state;
  pthread_mutex_unlock(&b->mu);
  return s;
}

uint64_t breaker_opens(breaker *b) {
  pthread_mutex_lock(&b->mu);
  uint64_t n = b->opens;
  pthread_mutex_unlock(&b->mu);
  return n;
}

const char *breaker_state_name(breaker_state s) {
  return s == BREAKER_CLOSED ? "closed" : s == BREAKER_OPEN ? "open" : "half_open";
}
