// regent.hpp — header-only C++17 RAII wrapper over libregent (regent.h).
//
//   regent::Client client;                       // $REGENT_SOCKET or the default socket
//   regent::Token token = client.token(std::chrono::seconds(60));
//   send_request("Authorization: Bearer " + std::string(token.access_token()));
//
// Errors are exceptions (regent::Error, carrying the regent_result code, its
// name, the message and the agent's retry hint). Why exceptions rather than
// std::expected-style results: constructors (Client) can fail and must not
// leave half-made objects; C++17 has no std::expected; and these failures
// (agent not running, not enrolled, revoked) are rare conditions an
// application handles in one place, not on every call.
//
// Ownership: Client, Token and Subscription own their C handle and free it in
// their destructor (move-only; a moved-from object is empty). Token values
// are zeroized by the library when the Token is destroyed.
//
// Threads: a Client may be used from many threads at once (token(),
// subscribe()). A Token is immutable. A Subscription's callback runs on a
// library thread; destroying the Subscription (or stop()) waits for that
// thread, so no callback runs afterwards. The callback must not let an
// exception escape: the wrapper catches and drops it (it cannot cross the C
// library).
#ifndef REGENT_HPP
#define REGENT_HPP

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "regent.h"

namespace regent {

/// A failed call: the regent_result code (the error table's number), its
/// name, a message for people (what() ), and the agent's retry hint.
class Error : public std::runtime_error {
 public:
  Error(regent_result code, const std::string &message, std::chrono::milliseconds retry_after)
      : std::runtime_error(message), code_(code), retry_after_(retry_after) {}

  /// The stable number (REGENT_NOT_ENROLLED, REGENT_AGENT_UNREACHABLE, …).
  regent_result code() const noexcept { return code_; }
  /// The stable name, e.g. "NOT_ENROLLED".
  const char *name() const noexcept { return regent_result_name(code_); }
  /// Whether trying again later may succeed without anyone changing anything.
  bool is_retryable() const noexcept { return regent_result_is_retryable(code_); }
  /// The 0.1 name of is_retryable(); removed in 0.3.
  bool retryable() const noexcept { return is_retryable(); }
  /// How long the agent asked to wait before retrying (0 when no hint).
  std::chrono::milliseconds retry_after() const noexcept { return retry_after_; }

 private:
  regent_result code_;
  std::chrono::milliseconds retry_after_;
};

namespace detail {

/// Throws the calling thread's last error when `rc` is not REGENT_OK.
inline void check(regent_result rc) {
  if (rc != REGENT_OK) {
    const char *message = regent_last_error_message();
    throw Error(rc, message != nullptr ? message : "",
                std::chrono::milliseconds(regent_last_error_retry_after_ms()));
  }
}

inline std::uint32_t clamp_u32(std::int64_t value) {
  if (value < 0) return 0;
  if (value > static_cast<std::int64_t>(std::numeric_limits<std::uint32_t>::max()))
    return std::numeric_limits<std::uint32_t>::max();
  return static_cast<std::uint32_t>(value);
}

struct FreeToken {
  void operator()(regent_token *t) const noexcept { regent_token_free(t); }
};
struct FreeClient {
  void operator()(regent_client *c) const noexcept { regent_client_free(c); }
};
struct FreeOptions {
  void operator()(regent_client_options *o) const noexcept { regent_client_options_free(o); }
};
struct FreeSubscription {
  void operator()(regent_subscription *s) const noexcept { regent_subscription_free(s); }
};
struct FreeUser {
  void operator()(regent_user *u) const noexcept { regent_user_free(u); }
};

}  // namespace detail

/// An access token (owned; its value is zeroized when it is destroyed).
class Token {
 public:
  /// Takes ownership of a token from the C API.
  explicit Token(regent_token *token) noexcept : token_(token) {}

  /// The bearer value (the wire's access_token); valid while this Token
  /// lives. Never log it.
  std::string_view access_token() const noexcept {
    return text(regent_token_access_token(get()));
  }
  /// Usually "Bearer".
  std::string_view token_type() const noexcept { return text(regent_token_type(get())); }
  /// The 0.1 names of access_token() and token_type(); removed in 0.3.
  std::string_view value() const noexcept { return access_token(); }
  std::string_view type() const noexcept { return token_type(); }
  /// The granted scope, when the license server named one.
  std::optional<std::string_view> scope() const noexcept {
    const char *scope = regent_token_scope(get());
    if (scope == nullptr) return std::nullopt;
    return std::string_view(scope);
  }
  /// When the token expires (wall clock).
  std::chrono::system_clock::time_point expires_at() const noexcept {
    return std::chrono::system_clock::time_point(std::chrono::duration_cast<
        std::chrono::system_clock::duration>(
        std::chrono::milliseconds(regent_token_expires_at_ms(get()))));
  }
  /// How long it stays valid from now; zero once expired.
  std::chrono::milliseconds remaining() const noexcept {
    return std::chrono::milliseconds(regent_token_remaining_ms(get()));
  }
  /// An independent copy.
  Token clone() const { return copy_of(get()); }
  /// A copy of a token the caller does not own (e.g. an event's).
  static Token copy_of(const regent_token *borrowed) {
    regent_token *copy = nullptr;
    detail::check(regent_token_clone(borrowed, &copy));
    return Token(copy);
  }
  /// The C handle (still owned by this Token).
  const regent_token *get() const noexcept { return token_.get(); }

 private:
  static std::string_view text(const char *s) noexcept {
    return s != nullptr ? std::string_view(s) : std::string_view();
  }
  std::unique_ptr<regent_token, detail::FreeToken> token_;
};

/// Who is signed in to the agent (`regent login`): copies of what the
/// identity provider said, so it outlives the C handle.
struct User {
  /// The provider's stable subject id.
  std::string sub;
  /// The login name and e-mail address, when the provider gave them.
  std::optional<std::string> preferred_username;
  std::optional<std::string> email;
  /// The scope granted at sign-in, when the server said.
  std::optional<std::string> scope;
};

/// Something a subscription reports (see regent_event_kind).
struct Event {
  enum class Kind { token, state, error };
  Kind kind;
  /// The new token (Kind::token).
  std::optional<Token> token;
  /// The agent's new state (Kind::state), e.g. "revoked".
  std::string state;
  /// Why (Kind::error, or a state change caused by a failure).
  std::optional<Error> error;
};

/// Tokens and state changes pushed to a callback on a library thread.
/// Destroying it (or stop()) waits for that thread: no callback runs after.
class Subscription {
 public:
  using Callback = std::function<void(const Event &)>;

  Subscription(Subscription &&) noexcept = default;
  Subscription &operator=(Subscription &&other) noexcept {
    if (this != &other) {
      stop();
      subscription_ = std::move(other.subscription_);
      callback_ = std::move(other.callback_);
    }
    return *this;
  }
  ~Subscription() { stop(); }

  /// Stops delivering events and waits until the callback has returned.
  void stop() noexcept {
    subscription_.reset();  // regent_subscription_free joins the thread
    callback_.reset();      // only then may the callback go
  }

 private:
  friend class Client;
  Subscription() = default;

  static void trampoline(void *userdata, const regent_event *event) noexcept {
    const Callback &callback = *static_cast<const Callback *>(userdata);
    try {
      Event e{Event::Kind::error, std::nullopt, std::string(), std::nullopt};
      if (event->result != REGENT_OK) {
        e.error.emplace(static_cast<regent_result>(event->result), event->message,
                        std::chrono::milliseconds(event->retry_after_ms));
      }
      switch (event->kind) {
        case REGENT_EVENT_TOKEN:
          e.kind = Event::Kind::token;
          e.token = Token::copy_of(event->token);
          break;
        case REGENT_EVENT_STATE:
          e.kind = Event::Kind::state;
          e.state = event->state != nullptr ? event->state : "";
          break;
        case REGENT_EVENT_ERROR:
          e.kind = Event::Kind::error;
          break;
        default:
          return;  // a kind from a newer library
      }
      callback(e);
    } catch (...) {
      // Nothing may unwind into the C library; the callback owns its errors.
    }
  }

  std::unique_ptr<regent_subscription, detail::FreeSubscription> subscription_;
  std::unique_ptr<Callback> callback_;
};

/// How to reach the agent; unset fields keep libregent's defaults
/// ($REGENT_SOCKET or the default socket, the executable's name, 2 s to
/// connect, 30 s per call).
struct Options {
  std::optional<std::string> socket;
  std::optional<std::string> app;
  std::optional<std::string> instance;
  std::optional<std::chrono::milliseconds> connect_timeout;
  std::optional<std::chrono::milliseconds> request_timeout;
  /// Per-instance agents: how long a token request waits for a free slot
  /// before NO_FREE_INSTANCE (default: no wait).
  std::optional<std::chrono::milliseconds> wait_for_instance;
  /// The uid the agent runs as when it is neither yours nor root's (default
  /// $REGENT_AGENT_UID); any other server on the socket is refused.
  std::optional<std::uint32_t> agent_uid;
};

/// A connection to the agent, usable from many threads at once.
class Client {
 public:
  /// Connects (throws regent::Error, e.g. REGENT_AGENT_UNREACHABLE).
  explicit Client(const Options &options = Options()) {
    regent_client_options *raw = nullptr;
    detail::check(regent_client_options_new(&raw));
    std::unique_ptr<regent_client_options, detail::FreeOptions> opts(raw);
    if (options.socket) detail::check(regent_client_options_set_socket(raw, options.socket->c_str()));
    if (options.app) detail::check(regent_client_options_set_app(raw, options.app->c_str()));
    if (options.instance)
      detail::check(regent_client_options_set_instance(raw, options.instance->c_str()));
    if (options.connect_timeout)
      detail::check(regent_client_options_set_connect_timeout_ms(
          raw, detail::clamp_u32(options.connect_timeout->count())));
    if (options.request_timeout)
      detail::check(regent_client_options_set_request_timeout_ms(
          raw, detail::clamp_u32(options.request_timeout->count())));
    if (options.wait_for_instance)
      detail::check(regent_client_options_set_wait_for_instance_ms(
          raw, detail::clamp_u32(options.wait_for_instance->count())));
    if (options.agent_uid)
      detail::check(regent_client_options_set_agent_uid(raw, *options.agent_uid));
    regent_client *client = nullptr;
    detail::check(regent_client_connect(raw, &client));
    client_.reset(client);
  }

  /// A token valid for at least `min_valid` (throws regent::Error).
  Token token(std::chrono::seconds min_valid) const {
    regent_token *token = nullptr;
    detail::check(regent_client_token(client_.get(), detail::clamp_u32(min_valid.count()), &token));
    return Token(token);
  }

  /// Who is signed in; nullopt for a device enrollment, or when this
  /// process is not the agent's own account (throws regent::Error).
  std::optional<User> user() const {
    regent_user *raw = nullptr;
    detail::check(regent_client_user(client_.get(), &raw));
    if (raw == nullptr) return std::nullopt;
    std::unique_ptr<regent_user, detail::FreeUser> owned(raw);
    auto optional = [](const char *s) -> std::optional<std::string> {
      if (s == nullptr) return std::nullopt;
      return std::string(s);
    };
    return User{regent_user_sub(raw), optional(regent_user_preferred_username(raw)),
                optional(regent_user_email(raw)), optional(regent_user_scope(raw))};
  }

  /// Calls `callback` on a library thread with each event: the current token
  /// first, each renewed token, state changes (throws regent::Error).
  Subscription subscribe(std::chrono::seconds min_valid, Subscription::Callback callback) const {
    Subscription subscription;
    subscription.callback_ = std::make_unique<Subscription::Callback>(std::move(callback));
    regent_subscription *raw = nullptr;
    detail::check(regent_client_subscribe(client_.get(), detail::clamp_u32(min_valid.count()),
                                          &Subscription::trampoline,
                                          subscription.callback_.get(), &raw));
    subscription.subscription_.reset(raw);
    return subscription;
  }

  /// The C handle (still owned by this Client).
  const regent_client *get() const noexcept { return client_.get(); }

 private:
  std::unique_ptr<regent_client, detail::FreeClient> client_;
};

/// The version of the libregent actually loaded (compare with REGENT_VERSION).
inline std::string_view library_version() noexcept { return regent_version(); }

}  // namespace regent

#endif  // REGENT_HPP
