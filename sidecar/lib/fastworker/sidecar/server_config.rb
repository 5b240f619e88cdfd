# frozen_string_literal: true

require "json"
require "uri"
require "set"

module Fastworker
  module Sidecar
    # ServerConfig: the effective Sidekiq server configuration, resolved by Sidekiq's own code.
    #
    # Duties:
    # 1. Before the app boots, hand the Sidekiq CLI arguments (`-r ROOT -e ENV` plus whatever
    #    follows `--` on the fastworker-sidecar command line) to Sidekiq::CLI#setup_options, so
    #    config/sidekiq.yml(.erb) is found, rendered and merged exactly as `sidekiq` would, into
    #    the very settings the app's `configure_server` blocks then see and change.
    # 2. After the boot, apply the CLI's last default (the tag from the app folder's name, as
    #    CLI#boot_application does) and take a snapshot: queues and weights, concurrency,
    #    capsules (7.x+), timeout, tag, labels, retry and dead-set limits, poll interval, the
    #    Redis URL and namespace, the Sidekiq version.
    # 3. Answer GET /config and `fastworker-sidecar --print-config` with that snapshot as JSON
    #    (the worker's fastworker/sidekiq_config.py reads it).
    # 4. Once the workers say their settings (Lifecycle), make them Sidekiq's options, and on 6.x
    #    size Sidekiq's Redis pool from their concurrency, as `sidekiq -c N` sizes it.
    # Only this file knows how a setting is spelled in 6.x (`Sidekiq.options`) and 7.x/8.x
    # (`Sidekiq.default_configuration`, capsules); Compat still owns the per-job API.
    module ServerConfig
      module_function

      # Sidekiq CLI arguments for the sidecar: the app root and environment it boots, then the
      # operator's own (`fastworker-sidecar ... -- -C config/sidekiq.yml -q critical,3`).
      def argv(rails_root, environment, extra = [])
        args = ["-r", rails_root]
        args += ["-e", environment] if environment
        args + extra
      end

      # Sidekiq's own parser over the arguments; raises ArgumentError as `sidekiq` would
      # (a missing -C file, a queue given twice).
      def setup!(args)
        watch_redis!
        cli = ::Sidekiq::CLI.instance
        cli.instance_variable_set(:@config, ::Sidekiq.default_configuration) if modern? && !cli.instance_variable_get(:@config)
        cli.send(:setup_options, args.dup)
        @cli = cli
      end

      # After the app is booted: the default tag, as CLI#boot_application sets it.
      def booted!
        return unless @cli && defined?(::Rails) && ::Rails.respond_to?(:root) && ::Rails.root

        opts = options
        opts[:tag] ||= @cli.send(:default_tag, *(@cli.method(:default_tag).arity.zero? ? [] : [::Rails.root]))
      end

      # The workers' own settings (Lifecycle, duty 4): Sidekiq's options then say what the server
      # runs with, whatever the YAML file said.
      def follow_workers(timeout: nil, concurrency: nil, max_retries: nil)
        opts = options
        opts[:timeout] = (timeout % 1).zero? ? timeout.to_i : timeout if timeout
        opts[:concurrency] = concurrency if concurrency
        opts[:max_retries] = max_retries if max_retries
        resize_redis_pool(concurrency) if concurrency && !modern?
      end

      # 6.x sizes its server pool concurrency + 5 when it is built (RedisConnection.create), which
      # `sidekiq` does after reading -c; here the app's `config.redis =` ran at boot, before the
      # workers said theirs. Build it again from what the app gave, through Sidekiq's own
      # `Sidekiq.redis=`. An explicit :size, or a ConnectionPool the app built, is the app's.
      # The old pool is left to the GC: a running job may still hold one of its connections.
      def resize_redis_pool(concurrency)
        pool = ::Sidekiq.instance_variable_get(:@redis)
        given = @redis_given || {}
        return if pool.nil? || pool.size == concurrency + 5 || given.is_a?(::ConnectionPool)
        return if given.transform_keys(&:to_sym)[:size]

        ::Sidekiq.redis = given
      end

      # Before the app boots: keep what its `config.redis =` gives 6.x (resize_redis_pool).
      def watch_redis!
        ::Sidekiq.singleton_class.prepend(RedisGiven) unless modern? || ::Sidekiq.singleton_class.include?(RedisGiven)
      end

      def redis_given=(hash)
        @redis_given = hash
      end

      module RedisGiven
        def redis=(hash)
          ServerConfig.redis_given = hash
          super
        end
      end

      def modern?
        ::Sidekiq.respond_to?(:default_configuration)
      end

      def options
        modern? ? ::Sidekiq.default_configuration : ::Sidekiq.options
      end

      def snapshot
        opts = options
        out = {
          "sidekiq_version" => ::Sidekiq::VERSION,
          "environment" => @cli&.environment,
          "config_file" => opts[:config_file],
          "timeout" => opts[:timeout],
          "tag" => opts[:tag],
          "labels" => Array(opts[:labels]).map(&:to_s),
          "verbose" => opts[:verbose] ? true : false,
          "max_retries" => opts[:max_retries],
          "dead_max_jobs" => opts[:dead_max_jobs],
          "dead_timeout_in_seconds" => opts[:dead_timeout_in_seconds],
          "average_scheduled_poll_interval" => opts[:average_scheduled_poll_interval],
          "poll_interval_average" => opts[:poll_interval_average]
        }
        out.merge!(modern? ? modern_queues(opts) : legacy_queues(opts))
        out.merge!(redis_settings)
        out["options"] = plain_options
        out
      end

      # Every option Sidekiq holds whose value is plain data (numbers, strings, lists of them):
      # the YAML file's other keys end up here too (a fastworker key such as :heartbeat_interval:
      # is merged in like any other), so the worker reads them from Sidekiq's parse as well.
      def plain_options
        hash = modern? ? ::Sidekiq.default_configuration.instance_variable_get(:@options) : ::Sidekiq.options
        hash.each_with_object({}) do |(key, value), h|
          value = value.to_a if value.is_a?(Set)
          h[key.to_s] = value if plain?(value)
        end
      end

      def plain?(value)
        case value
        when String, Symbol, Integer, Float, true, false, nil then true
        when Array then value.all? { |v| plain?(v) }
        else false
        end
      end

      def to_json(*)
        JSON.generate(snapshot)
      end

      # 6.x keeps the weighted list expanded ("a,3" is [a, a, a]) and a strict flag.
      def legacy_queues(opts)
        list = Array(opts[:queues] || ["default"]).map(&:to_s)
        strict = opts[:strict].nil? ? true : opts[:strict]
        counts = list.each_with_object(Hash.new(0)) { |q, h| h[q] += 1 }
        pairs = counts.map { |q, n| [q, strict ? 0 : n] }
        {"queues" => pairs, "concurrency" => opts[:concurrency] || 10, "capsules" => {},
         "redis_pool_size" => ::Sidekiq.redis_pool.size}
      end

      # 7.x/8.x: the default capsule holds the top-level queues and concurrency; others are
      # their own fetch pools.
      def modern_queues(cfg)
        capsules = cfg.capsules.each_with_object({}) do |(name, cap), h|
          # weights is name => weight in the order given (queues is the expanded list)
          h[name] = {"concurrency" => cap.concurrency, "queues" => cap.weights.map { |q, w| [q, w.to_i] }}
        end
        default = capsules.delete("default") || {"concurrency" => cfg[:concurrency], "queues" => [["default", 0]]}
        {"queues" => default["queues"], "concurrency" => default["concurrency"], "capsules" => capsules}
      end

      # The URL (and 6.x namespace) Sidekiq's own Redis pool uses: Ruby's `config.redis = {...}`,
      # else REDIS_PROVIDER/REDIS_URL as Sidekiq reads them. Building the pool connects nothing.
      def redis_settings
        if modern?
          conf = ::Sidekiq.default_configuration.instance_variable_get(:@redis_config) || {}
          url = conf[:url] || conf["url"] || ::Sidekiq::RedisConnection.send(:determine_redis_provider)
          return {"redis_url" => url, "namespace" => nil}
        end

        ::Sidekiq.redis_pool.with do |conn|
          namespace = conn.respond_to?(:namespace) ? conn.namespace.to_s : nil
          client = (namespace ? conn.redis : conn)._client
          {"redis_url" => client_url(client), "namespace" => namespace}
        end
      end

      def client_url(client)
        return "unix://#{client.path}" if client.path

        userinfo = [client.username, client.password].compact.map { |s| URI.encode_www_form_component(s) }
        userinfo = userinfo.empty? ? "" : ((client.username ? "" : ":") + userinfo.join(":") + "@")
        "#{client.scheme || "redis"}://#{userinfo}#{client.host}:#{client.port}/#{client.db}"
      end
    end
  end
end
