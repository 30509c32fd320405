"""Tests of the regent Python binding against a live, enrolled agent.

Run from bindings/python with the standard library only:

    REGENT_LIBRARY=…/libregent.so REGENT_SOCKET=…/agent.sock python3 -m unittest discover -s tests -v

(tests/tests/ffi.rs starts an emulator and an agent and runs them so.)
Without REGENT_SOCKET the live tests are skipped.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import unittest

import regent

SOCKET = os.environ.get("REGENT_SOCKET")
live = unittest.skipUnless(SOCKET, "needs a live agent: set REGENT_SOCKET (and REGENT_LIBRARY)")


class TableTest(unittest.TestCase):
    def test_codes_are_the_library_s_table(self) -> None:
        lib = regent._library()
        for code in regent.Code:
            self.assertEqual(lib.regent_result_name(code).decode(), code.name)
        self.assertEqual(lib.regent_result_name(len(regent.Code)).decode(), "UNKNOWN")

    def test_errors_carry_number_and_name(self) -> None:
        e = regent.RegentError(regent.Code.UNAVAILABLE, "no token yet", 1.5)
        self.assertEqual((e.code, e.name, e.retry_after), (7, "UNAVAILABLE", 1.5))
        # The code is the Code enum (equal to its number), as in every
        # other binding; a number this binding does not know stays an int.
        self.assertIs(regent.RegentError(7, "").code, regent.Code.UNAVAILABLE)
        self.assertEqual(type(regent.RegentError(99, "").code), int)
        self.assertTrue(e.is_retryable)
        self.assertTrue(e.retryable, "the 0.1 name still answers")
        self.assertEqual(str(e), "UNAVAILABLE: no token yet")
        self.assertFalse(regent.RegentError(regent.Code.REVOKED, "").is_retryable)

    def test_version(self) -> None:
        self.assertRegex(regent.library_version(), r"^\d+\.\d+\.\d+")

    def test_unreachable_agent(self) -> None:
        with self.assertRaises(regent.RegentError) as caught:
            regent.Client(socket="/nonexistent/regent/agent.sock", connect_timeout=1)
        e = caught.exception
        self.assertEqual((e.code, e.name), (14, "AGENT_UNREACHABLE"))
        self.assertIn("/nonexistent/regent/agent.sock", e.message)

    def test_invalid_arguments(self) -> None:
        with self.assertRaises(regent.RegentError) as caught:
            regent.Client(socket="/nowhere.sock", app="")
        self.assertEqual(caught.exception.code, regent.Code.BAD_REQUEST)
        with self.assertRaises(ValueError):
            regent.Client(socket="/nowhere.sock", request_timeout=0)
        with self.assertRaises(ValueError):
            regent.Client(socket="/nowhere.sock", timeout=0)
        with self.assertRaises(ValueError):
            regent.Client(socket="/nowhere.sock", request_timeout=1, timeout=1)
        with self.assertRaises(ValueError):
            regent.Client(socket="/nowhere.sock", wait_for_instance=0)
        for uid in (-1, 2**32, True):
            with self.assertRaises(ValueError):
                regent.Client(socket="/nowhere.sock", agent_uid=uid)


@live
class LiveTest(unittest.TestCase):
    def client(self) -> regent.Client:
        client = regent.Client(
            socket=SOCKET, app="python-test", request_timeout=10, wait_for_instance=1
        )
        self.addCleanup(client.close)
        return client

    def test_a_device_enrollment_has_no_signed_in_user(self) -> None:
        self.assertIsNone(self.client().user())

    def test_token_with_min_valid(self) -> None:
        token = self.client().token(min_valid=30)
        self.assertGreater(len(token.access_token), 20)
        self.assertEqual(token.value, token.access_token, "the 0.1 name still reads it")
        self.assertEqual(token.token_type, "Bearer")
        self.assertGreaterEqual(token.remaining(), 29)
        self.assertGreater(token.expires_at.timestamp(), time.time() + 29)
        self.assertNotIn(token.access_token, repr(token))
        self.assertIn("redacted", repr(token))

    def test_default_socket_comes_from_the_environment(self) -> None:
        with regent.Client() as client:
            self.assertTrue(client.token(min_valid=1).access_token)
        self.assertTrue(client.closed)
        with self.assertRaises(ValueError):
            client.token()

    def test_more_validity_than_the_server_gives_is_refused_with_a_code(self) -> None:
        with self.assertRaises(regent.RegentError) as caught:
            self.client().token(min_valid=10**7)
        # Retrying cannot help: BAD_REQUEST naming the server's lifetime.
        self.assertEqual(caught.exception.name, "BAD_REQUEST")
        self.assertIs(caught.exception.code, regent.Code.BAD_REQUEST)
        self.assertIn("tokens valid for", caught.exception.message)
        with self.assertRaises(ValueError):
            self.client().token(min_valid=-1)

    def test_one_client_many_threads(self) -> None:
        client = self.client()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(20):
                    self.assertTrue(client.token(min_valid=5).access_token)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_subscribe_delivers_the_current_token_until_closed(self) -> None:
        events: "queue.Queue[regent.Event]" = queue.Queue()
        subscription = self.client().subscribe(events.put, min_valid=1)
        event = events.get(timeout=10)
        self.assertEqual(event.kind, "token")
        assert event.token is not None
        self.assertTrue(event.token.access_token)
        self.assertIsNone(event.error)
        subscription.close()
        self.assertTrue(subscription.closed)
        subscription.close()  # twice is fine
        count = events.qsize()
        time.sleep(0.3)
        self.assertEqual(events.qsize(), count, "no callback after close()")

    def test_closing_from_inside_the_callback(self) -> None:
        done = threading.Event()
        holder: dict[str, regent.Subscription] = {}

        def callback(event: regent.Event) -> None:
            while "sub" not in holder:
                time.sleep(0.01)
            holder["sub"].close()
            done.set()

        holder["sub"] = self.client().subscribe(callback, min_valid=1)
        self.assertTrue(done.wait(10))
        self.assertTrue(holder["sub"].closed)


if __name__ == "__main__":
    unittest.main()
