/*
 * get_token — connect to the regent agent, get an access token that stays
 * valid for at least MIN_VALID seconds, print when it expires, free it.
 *
 *   get_token [--once] [MIN_VALID_SECS [CYCLES]]
 *   get_token --user
 *
 * The agent's socket comes from $REGENT_SOCKET (else the default path).
 * CYCLES > 1 repeats the get/free step (the leak check runs 10,000). With
 * --once each token comes from regent_token_once: a connection of its own,
 * one round trip (for programs that ask once), instead of a client kept
 * open. --user prints who is signed in to the agent (`regent login`) instead. On failure the exit status is the regent_result number, like the
 * CLI's.
 *
 * Build: cc -Wall -Wextra -Wpedantic get_token.c -Ibindings/c/include \
 *           -Ltarget/debug -lregent -o get_token
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regent.h"

static int fail(const char *what, regent_result rc) {
  fprintf(stderr, "get_token: %s failed: %s (%u): %s\n", what,
          regent_result_name(rc), (unsigned)rc, regent_last_error_message());
  if (regent_result_is_retryable(rc) && regent_last_error_retry_after_ms() > 0) {
    fprintf(stderr, "get_token: the agent suggests retrying in %" PRIu64 " ms\n",
            regent_last_error_retry_after_ms());
  }
  return (int)rc;
}

/* Who is signed in: a user's sign-in, or none for a device enrollment. */
static int print_user(regent_client *client) {
  regent_user *user = NULL;
  regent_result rc = regent_client_user(client, &user);
  if (rc != REGENT_OK) return fail("regent_client_user", rc);
  if (user == NULL) {
    printf("user: none (a device enrollment, or not enrolled)\n");
    return 0;
  }
  printf("user: %s, sub %s, email %s, scope %s\n",
         regent_user_preferred_username(user) ? regent_user_preferred_username(user) : "-",
         regent_user_sub(user),
         regent_user_email(user) ? regent_user_email(user) : "-",
         regent_user_scope(user) ? regent_user_scope(user) : "-");
  regent_user_free(user);
  return 0;
}

int main(int argc, char **argv) {
  int user_only = argc > 1 && strcmp(argv[1], "--user") == 0;
  int once = argc > 1 && strcmp(argv[1], "--once") == 0;
  unsigned long min_valid = argc > 1 + once ? strtoul(argv[1 + once], NULL, 10) : 60;
  unsigned long cycles = argc > 2 + once ? strtoul(argv[2 + once], NULL, 10) : 1;
  regent_client_options *options = NULL;
  regent_client *client = NULL;
  regent_result rc;
  unsigned long i;

  /* The header and the loaded library must be the same version. */
  if (strcmp(regent_version(), REGENT_VERSION) != 0) {
    fprintf(stderr, "get_token: built with regent.h %s but loaded libregent %s\n",
            REGENT_VERSION, regent_version());
    return 1;
  }
  printf("libregent %s\n", regent_version());

  rc = regent_client_options_new(&options);
  if (rc != REGENT_OK) return fail("regent_client_options_new", rc);
  rc = regent_client_options_set_app(options, "get_token");
  if (rc == REGENT_OK) rc = regent_client_options_set_request_timeout_ms(options, 10000);
  if (!once) {
    if (rc == REGENT_OK) rc = regent_client_connect(options, &client);
    regent_client_options_free(options); /* connect copied it */
    options = NULL;
  }
  if (rc != REGENT_OK) {
    regent_client_options_free(options); /* NULL does nothing */
    return fail("connecting to the agent", rc);
  }
  if (user_only) {
    int status = print_user(client);
    regent_client_free(client);
    return status;
  }

  for (i = 0; i < cycles; i++) {
    regent_token *token = NULL;
    rc = once ? regent_token_once(options, (uint32_t)min_valid, &token)
              : regent_client_token(client, (uint32_t)min_valid, &token);
    if (rc != REGENT_OK) {
      int status = fail(once ? "regent_token_once" : "regent_client_token", rc);
      regent_client_free(client); /* NULL (with --once) does nothing */
      regent_client_options_free(options);
      return status;
    }
    if (i + 1 == cycles) {
      /* The value goes into an "Authorization: Bearer ..." header; never log it. */
      printf("token: %s, %zu bytes, valid for %" PRIu64 " s (at least %lu asked), "
             "expires at %" PRIu64 " ms since the epoch\n",
             regent_token_type(token), strlen(regent_token_access_token(token)),
             regent_token_remaining_ms(token) / 1000, min_valid,
             regent_token_expires_at_ms(token));
    }
    regent_token_free(token); /* zeroizes the value */
  }
  if (cycles > 1) printf("cycles: %lu\n", cycles);

  regent_client_free(client);
  regent_client_options_free(options);
  return 0;
}
