/*
 * subscribe — print the tokens and state changes the regent agent pushes,
 * until standard input closes (Ctrl-D); then stop the subscription.
 *
 *   subscribe [MIN_VALID_SECS]
 *
 * The callback runs on a library thread; regent_subscription_free() joins
 * it, so once it returns no callback runs and the userdata may go away.
 *
 * Build: cc -Wall -Wextra -Wpedantic -pthread subscribe.c -Ibindings/c/include \
 *           -Ltarget/debug -lregent -o subscribe
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "regent.h"

/* What the callback shares with the main thread (the userdata). */
struct seen {
  pthread_mutex_t lock;
  unsigned long events;
};

static void on_event(void *userdata, const regent_event *event) {
  struct seen *seen = userdata;
  pthread_mutex_lock(&seen->lock);
  seen->events++;
  pthread_mutex_unlock(&seen->lock);

  switch (event->kind) {
    case REGENT_EVENT_TOKEN:
      /* event->token is borrowed: regent_token_clone() it to keep it. */
      printf("event: token, valid for %" PRIu64 " s\n",
             regent_token_remaining_ms(event->token) / 1000);
      break;
    case REGENT_EVENT_STATE:
      if (event->result == REGENT_OK) {
        printf("event: state %s\n", event->state);
      } else {
        printf("event: state %s (%s: %s)\n", event->state, regent_result_name(event->result),
               event->message);
      }
      break;
    case REGENT_EVENT_ERROR:
      printf("event: error %s: %s\n", regent_result_name(event->result), event->message);
      break;
    default: /* kinds added by newer versions */
      break;
  }
}

int main(int argc, char **argv) {
  unsigned long min_valid = argc > 1 ? strtoul(argv[1], NULL, 10) : 60;
  struct seen seen;
  regent_client *client = NULL;
  regent_subscription *subscription = NULL;
  regent_result rc;

  setvbuf(stdout, NULL, _IOLBF, 0); /* one line per event, even into a pipe */
  pthread_mutex_init(&seen.lock, NULL);
  seen.events = 0;

  /* NULL options: the defaults ($REGENT_SOCKET, the executable's name). */
  rc = regent_client_connect(NULL, &client);
  if (rc != REGENT_OK) {
    fprintf(stderr, "subscribe: %s: %s\n", regent_result_name(rc), regent_last_error_message());
    return (int)rc;
  }
  rc = regent_client_subscribe(client, (uint32_t)min_valid, on_event, &seen, &subscription);
  regent_client_free(client); /* the subscription has a connection of its own */
  if (rc != REGENT_OK) {
    fprintf(stderr, "subscribe: %s: %s\n", regent_result_name(rc), regent_last_error_message());
    return (int)rc;
  }
  printf("subscribed (min valid %lu s); close stdin to stop\n", min_valid);

  while (getchar() != EOF) {
  }

  regent_subscription_free(subscription); /* joins the callback thread */
  pthread_mutex_lock(&seen.lock);
  printf("stopped after %lu events\n", seen.events);
  pthread_mutex_unlock(&seen.lock);
  pthread_mutex_destroy(&seen.lock);
  return 0;
}
