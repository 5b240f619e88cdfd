# frozen_string_literal: true

require "base64"
require "openssl"
require "securerandom"

module Fastworker
  module Sidecar
    # Failures: the live exception of each job that failed, for its exhaustion hooks (a later
    # /exhausted request, after the worker decided), so that they get the real exception object,
    # its own attributes, cause and backtrace intact, as Sidekiq's JobRetry hands them over.
    #
    # Duties:
    # 1. Keep it in this process for a while. Bounded: the oldest go first beyond LIMIT, and any
    #    older than TTL seconds.
    # 2. Seal it too (`keep` returns the seal, which the 422 answer carries as "exception"): its
    #    Marshal form with an HMAC of this sidecar's. The worker hands the seal back with the
    #    hooks, so a hook that runs in another Puma worker, after a restart or after TTL still
    #    gets the exception object. Only a seal this sidecar made is ever unmarshalled.
    # 3. A hook with neither gets one rebuilt from the report (RemoteError): an exception Marshal
    #    cannot dump (a Proc or an IO inside, a singleton method), or over SEAL_LIMIT.
    module Failures
      LIMIT = 1000
      TTL = 600
      SEAL_LIMIT = 32 * 1024 # bytes of Marshal data; a larger exception is rebuilt instead
      LOCK = Mutex.new
      @kept = {} # jid => [exception, monotonic time], oldest first

      # The seal key: from the shared secret when there is one, so that seals outlive a restart;
      # else made once in the Puma master, before the fork, so that every Puma worker has it.
      SEAL_KEY = begin
        secret = Auth.load_secret
        secret ? OpenSSL::HMAC.digest("SHA256", secret, "fastworker exception seal v1") : SecureRandom.bytes(32)
      rescue Auth::SecretError
        SecureRandom.bytes(32) # the launcher refuses to start with it and says why
      end

      module_function

      # Returns the seal (a String), or nil when the exception cannot be sealed.
      def keep(jid, exception)
        return unless jid.is_a?(String)

        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        LOCK.synchronize do
          @kept.delete(jid)
          @kept[jid] = [exception, now]
          @kept.shift while @kept.size > LIMIT
          @kept.shift while (first = @kept.first) && now - first[1][1] > TTL
        end
        seal(exception)
      end

      # The exception kept for jid, else the one in `sealed` (what keep returned), else nil;
      # ``forget: true`` drops the kept one (its last hook ran).
      def fetch(jid, sealed: nil, forget: false)
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        kept = LOCK.synchronize do
          exception, at = @kept[jid]
          @kept.delete(jid) if forget
          (at && now - at <= TTL) ? exception : nil
        end
        kept || unseal(sealed)
      end

      def seal(exception)
        data = Marshal.dump(exception)
        return nil if data.bytesize > SEAL_LIMIT

        Base64.strict_encode64(OpenSSL::HMAC.digest("SHA256", SEAL_KEY, data) + data)
      rescue StandardError # a Proc, an IO, a singleton, an anonymous class; an app's marshal_dump that raised
        nil
      end

      def unseal(sealed)
        return nil unless sealed.is_a?(String)

        raw = Base64.strict_decode64(sealed)
        mac, data = raw.byteslice(0, 32), raw.byteslice(32..)
        return nil unless data && OpenSSL.fixed_length_secure_compare(mac, OpenSSL::HMAC.digest("SHA256", SEAL_KEY, data))

        exception = Marshal.load(data) # rubocop:disable Security/MarshalLoad -- only bytes this sidecar sealed (the HMAC above)
        exception.is_a?(Exception) ? exception : nil
      rescue StandardError # not base64; a class this app no longer has, or that its autoloader cannot find
        nil
      end

      def clear
        LOCK.synchronize { @kept.clear }
      end
    end
  end
end
