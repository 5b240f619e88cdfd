# frozen_string_literal: true

require "ipaddr"
require "openssl"

module Fastworker
  module Sidecar
    # Auth: the sidecar's half of request signing (the worker's half is fastworker/signing.py;
    # the scheme is in docs/design.md "Authentication").
    #
    # Duties:
    # 1. Read the shared secret from FASTWORKER_SIDECAR_SECRET, or from the file named by
    #    FASTWORKER_SIDECAR_SECRET_FILE (Docker and Kubernetes secrets); refuse a secret shorter
    #    than 32 bytes, naming the variable, and never echo it.
    # 2. Verify a request: HMAC-SHA256 over the canonical string (scheme, method, path,
    #    timestamp, nonce, idempotency key(s)) and the raw body, compared in constant time.
    #    The body has not been parsed when this runs.
    # 3. Refuse a timestamp outside the window (either side: clocks drift), and a nonce already
    #    seen while it could still be fresh. The seen set is per process, bounded, and pruned
    #    as its entries expire. It holds no Ruby object per request: a 62-bit hash of the nonce
    #    and the expiry are both immediates. Kept as strings, the ~30 s of nonces (15,000 at 500
    #    requests a second) lived long enough to be promoted, so the sidecar ran major GCs that
    #    Sidekiq does not, and jobs waited behind them (issue 9's latency tail).
    # 4. Say whether a bind address is loopback-only: any other address needs a secret.
    class Auth
      class SecretError < StandardError; end

      SECRET_ENV = "FASTWORKER_SIDECAR_SECRET"
      SECRET_FILE_ENV = "FASTWORKER_SIDECAR_SECRET_FILE"
      MIN_SECRET_BYTES = 32
      WINDOW = 30
      # A full set refuses new nonces rather than forgetting live ones (fail closed). Only
      # authentic requests enter it, and this is far beyond what one Ruby process answers in
      # a window.
      MAX_SEEN = 1_000_000
      SCHEME = "v1"
      TIMESTAMP = /\A\d{1,12}\z/
      NONCE = /\A[0-9A-Za-z_-]{16,64}\z/

      # The secret (a binary String), or nil when neither variable is set.
      def self.load_secret(env = ENV)
        value = env[SECRET_ENV].to_s
        path = env[SECRET_FILE_ENV].to_s
        raise SecretError, "#{SECRET_ENV} and #{SECRET_FILE_ENV} are both set; set only one" if !value.empty? && !path.empty?

        if !path.empty?
          begin
            secret = File.binread(path).sub(/[\r\n]+\z/, "")
          rescue SystemCallError => e
            raise SecretError, "#{SECRET_FILE_ENV}: cannot read #{path.inspect}: #{e.message}"
          end
          source = "#{SECRET_FILE_ENV} (#{path})"
        elsif !value.empty?
          secret = value.b
          source = SECRET_ENV
        else
          return nil
        end
        if secret.bytesize < MIN_SECRET_BYTES
          raise SecretError, "#{source}: the secret must be at least #{MIN_SECRET_BYTES} bytes, got #{secret.bytesize}"
        end

        secret
      end

      def self.loopback?(host)
        bare = host.to_s.strip.delete_prefix("[").delete_suffix("]")
        return true if bare.casecmp?("localhost")

        IPAddr.new(bare).loopback?
      rescue IPAddr::InvalidAddressError
        false # a name that may resolve anywhere, or a wildcard such as 0.0.0.0
      end

      # The idempotency key as HTTP delivers a header value, whatever the server: without the
      # surrounding spaces and tabs (optional whitespace) Puma drops and the worker may have sent.
      # Checked first: a jid never has them, and this runs on every request.
      OWS = /\A[ \t]+|[ \t]+\z/

      def self.canonical(method, path, timestamp, nonce, idempotency)
        key = idempotency.to_s
        key = key.gsub(OWS, "") if key.start_with?(" ", "\t") || key.end_with?(" ", "\t")
        "fastworker-#{SCHEME}\n#{method}\n#{path}\n#{timestamp}\n#{nonce}\n#{key}\n"
      end

      attr_reader :window

      def initialize(secret, window: WINDOW, clock: -> { Time.now.to_i })
        # keyed once; each request copies it (a few µs instead of ~10 for a fresh HMAC)
        @template = OpenSSL::HMAC.new(secret.b, "SHA256")
        @window = window
        @clock = clock
        @seen = {} # nonce's hash => the second after which it can no longer pass the window check
        @lock = Mutex.new
      end

      def signed?(env)
        !env["HTTP_X_FASTWORKER_SIGNATURE"].to_s.empty?
      end

      # nil when the request is authentic and fresh; otherwise why not (the 401's reason).
      def check(env, body)
        timestamp = env["HTTP_X_FASTWORKER_TIMESTAMP"].to_s
        nonce = env["HTTP_X_FASTWORKER_NONCE"].to_s
        signature = env["HTTP_X_FASTWORKER_SIGNATURE"].to_s
        return "missing signature" if timestamp.empty? || nonce.empty? || signature.empty?
        return "bad timestamp" unless TIMESTAMP.match?(timestamp)
        return "bad nonce" unless NONCE.match?(nonce)

        mac = @template.dup
        mac << Auth.canonical(env["REQUEST_METHOD"], "#{env["SCRIPT_NAME"]}#{env["PATH_INFO"]}", timestamp, nonce,
          idempotency(env))
        mac << body
        expected = "#{SCHEME}=#{mac.hexdigest}"
        return "bad signature" unless signature.bytesize == expected.bytesize &&
          OpenSSL.fixed_length_secure_compare(expected, signature)

        now = @clock.call
        sent = Integer(timestamp, 10)
        return "stale request (timestamp outside the #{@window}s window)" if (now - sent).abs > @window

        remember(nonce, sent + @window, now)
      end

      private

      def idempotency(env)
        key = env["HTTP_IDEMPOTENCY_KEY"]
        key = env["HTTP_IDEMPOTENCY_KEYS"] if key.nil? || key.empty?
        key || ""
      end

      def remember(nonce, expires, now)
        # String#hash is 62 bits (a Fixnum): a false "replayed" needs two of the window's
        # nonces to collide, about one in 10^14 per request at a million in the window
        key = nonce.hash
        @lock.synchronize do
          # oldest first (insertion order); entries arrive nearly in timestamp order
          while (first = @seen.first) && first[1] < now
            @seen.delete(first[0])
          end
          return "replayed request" if @seen.key?(key)
          return "too many requests in the window" if @seen.size >= MAX_SEEN

          @seen[key] = expires
        end
        nil
      end
    end
  end
end
