// get_token.cpp — the C++ wrapper: connect, get a token that stays valid for
// at least MIN_VALID seconds, print when it expires; an error as an
// exception; a subscription's first token.
//
//   get_token_cpp [MIN_VALID_SECS]        (socket from $REGENT_SOCKET)
//
// Build: g++ -std=c++17 -Wall -Wextra -Ibindings/c/include -Ibindings/cpp
//            get_token.cpp -Ltarget/debug -lregent -o get_token_cpp
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>

#include "regent.hpp"

int main(int argc, char **argv) {
  using std::chrono::duration_cast;
  using std::chrono::seconds;
  const seconds min_valid(argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 60);

  std::cout << "libregent " << regent::library_version() << "\n";
  try {
    regent::Options options;
    options.app = "get_token_cpp";
    options.request_timeout = std::chrono::seconds(10);
    regent::Client client(options);

    // A user's sign-in names the user; a device enrollment has none.
    if (std::optional<regent::User> user = client.user()) {
      std::cout << "user: " << user->preferred_username.value_or(user->sub) << "\n";
    } else {
      std::cout << "user: none\n";
    }

    regent::Token token = client.token(min_valid);
    std::cout << "token: " << token.token_type() << ", " << token.access_token().size() << " bytes, valid for "
              << duration_cast<seconds>(token.remaining()).count() << " s (at least "
              << min_valid.count() << " asked)\n";

    // A subscription: wait for its first token, then stop it (the destructor
    // joins the callback thread).
    std::mutex lock;
    std::condition_variable arrived;
    std::optional<regent::Token> pushed;
    {
      regent::Subscription subscription =
          client.subscribe(min_valid, [&](const regent::Event &event) {
            if (event.kind != regent::Event::Kind::token) return;
            std::lock_guard<std::mutex> guard(lock);
            if (!pushed) pushed = event.token->clone();
            arrived.notify_all();
          });
      std::unique_lock<std::mutex> guard(lock);
      if (!arrived.wait_for(guard, seconds(10), [&] { return pushed.has_value(); })) {
        std::cerr << "no token pushed within 10 s\n";
        return 1;
      }
    }
    std::cout << "subscription: token, valid for "
              << duration_cast<seconds>(pushed->remaining()).count() << " s\n";
  } catch (const regent::Error &e) {
    std::cerr << "error " << e.name() << " (" << static_cast<unsigned>(e.code())
              << "): " << e.what() << "\n";
    return static_cast<int>(e.code());
  }

  // Errors carry the table's code and name.
  try {
    regent::Options nowhere;
    nowhere.socket = "/nonexistent/regent/agent.sock";
    regent::Client unreachable(nowhere);
  } catch (const regent::Error &e) {
    std::cout << "expected error: " << e.name() << " (" << static_cast<unsigned>(e.code())
              << "), retryable: " << (e.is_retryable() ? "yes" : "no") << "\n";
  }
  return 0;
}
