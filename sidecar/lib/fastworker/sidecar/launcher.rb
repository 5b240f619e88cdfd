# frozen_string_literal: true

require "optparse"

module Fastworker
  module Sidecar
    # Launcher: `fastworker-sidecar` — options, Rails boot and Puma in one process.
    #
    # Duties:
    # 1. Read options (flag > environment > default): --rails-root/RAILS_ROOT, --port/PORT,
    #    --bind or --socket/FASTWORKER_SIDECAR_SOCKET (a Unix socket), --threads/FASTWORKER_SIDECAR_THREADS, --workers/FASTWORKER_SIDECAR_WORKERS,
    #    --environment/RAILS_ENV, --drain-timeout/FASTWORKER_SIDECAR_DRAIN_TIMEOUT.
    # 2. Size Puma: `threads` job slots (the Drain's capacity) plus a few spare threads that
    #    answer /health and the 503s of requests beyond capacity, so nothing queues behind
    #    busy job threads.
    # 3. Single mode: listen at once and boot the app on a thread (/health says 503 until it
    #    is booted). Cluster mode (workers > 1): boot in the master and fork the booted app
    #    (preload), with connections closed before the fork.
    # 4. Keep idle keep-alive connections open (persistent_timeout), so each worker
    #    connection stays with the Puma worker process it first reached. Send each answer at
    #    once: TCP_NODELAY (Puma's `low_latency`, off by default in Puma 5; design.md,
    #    "Pipelined batches", says why).
    # 5. Install the drain-before-stop hook (PumaDrain) and the pipelining fix (PumaPipelining),
    #    and run Puma::Launcher.
    # 6. Refuse to start with a bad secret (shorter than 32 bytes, unreadable file), or on a
    #    non-loopback --bind without one: that door would run anyone's code.
    # 7. Before the app boots, resolve Sidekiq's server configuration with Sidekiq's own CLI
    #    code (ServerConfig): `-r ROOT -e ENV`, then any Sidekiq arguments after `--`. Without
    #    --drain-timeout, the drain waits Sidekiq's resolved `timeout`.
    # 8. --print-config: boot the app, print the resolved configuration as JSON, exit.
    class Launcher
      DEFAULT_THREADS = 10
      DEFAULT_PORT = 3001
      SPARE_THREADS = 2
      # Puma closes a keep-alive connection idle for 20 s by default; the worker's reconnect
      # could then land on another Puma worker. An hour keeps a quiet worker's connections.
      PERSISTENT_TIMEOUT = 3600

      attr_reader :options

      def initialize(argv = ARGV, env = ENV)
        @env = env
        @options = parse(argv.dup, env)
      end

      def puma_threads
        options[:threads] + options[:spare_threads]
      end

      def cluster?
        options[:workers] > 1
      end

      def run
        root = options[:rails_root]
        Dir.chdir(root)
        # Before RAILS_MAX_THREADS is set below: Sidekiq reads it as the concurrency fallback,
        # and only the operator's value may count there.
        resolve_sidekiq_config!
        ENV["RAILS_MAX_THREADS"] ||= puma_threads.to_s # sizes the app's AR pool (database.yml convention)
        return print_config if options[:print_config]
        require "puma"
        require "puma/configuration"
        require "puma/launcher"

        drain, app = Wiring.build(threads: options[:threads], workers: options[:workers], env: @env)
        Sidecar.drain_timeout_explicit = true if options[:drain_timeout_explicit]
        Sidecar.drain_timeout = options[:drain_timeout]

        if cluster?
          boot_app(drain)
        else
          Thread.new { boot_app(drain) }
        end
        ::Puma::Launcher.new(puma_configuration(app), events: ::Puma::Events.stdio).run
      end

      # Sidekiq's CLI parser over `-r ROOT -e ENV -- <sidekiq args>`, before any app code runs,
      # as `sidekiq` itself does; the app's configure_server blocks then see these settings.
      def resolve_sidekiq_config!
        require "fastworker/sidecar/server_config"
        Wiring.configure!(options[:rails_root], options[:environment], options[:sidekiq_args])
        Sidecar.drain_timeout = Float(ServerConfig.options[:timeout] || 25) unless options[:drain_timeout_given]
        options[:drain_timeout] = Sidecar.drain_timeout
      rescue ArgumentError => e
        warn "fastworker-sidecar: Sidekiq configuration: #{e.message}"
        exit 64
      end

      def print_config
        Boot.boot!(options[:rails_root], environment: options[:environment])
        ServerConfig.booted!
        $stdout.puts ServerConfig.to_json
        $stdout.flush
        exit!(0) # no at_exit hooks of the app (nothing was started)
      end

      # Before forking workers: nothing the master opened may be shared with children.
      # (Sidekiq 7+ uses redis-client, which reconnects after a fork by itself; Sidekiq 6's
      # redis-rb pool, if the master created one, is emptied.)
      def self.close_connections
        ::ActiveRecord::Base.connection_handler.clear_all_connections! if defined?(::ActiveRecord::Base)
        unless ::Sidekiq.respond_to?(:default_configuration)
          pool = ::Sidekiq.instance_variable_get(:@redis)
          pool.reload(&:close) if pool.respond_to?(:reload)
        end
      rescue => e
        Compat.logger.warn("fastworker-sidecar: closing connections before fork: #{e.class}: #{e.message}")
      end

      private

      def boot_app(drain)
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        Wiring.boot!(drain, options[:rails_root], options[:environment])
        took = (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).round(2)
        Compat.logger.info("fastworker-sidecar: booted Rails #{::Rails.version} (#{::Rails.env}) with Sidekiq #{::Sidekiq::VERSION} in #{took}s; #{options[:threads]} job slots per process")
      rescue Exception => e # rubocop:disable Lint/RescueException -- a half-booted sidecar must not stay up
        warn "fastworker-sidecar: boot failed: #{e.class}: #{e.message}\n#{Array(e.backtrace).first(20).join("\n")}"
        $stdout.flush
        $stderr.flush
        exit!(1)
      end

      def puma_configuration(app)
        opts = options
        threads = puma_threads
        drain_timeout = opts[:drain_timeout]
        cluster = cluster?
        ::Puma::Configuration.new({config_files: ["-"]}) do |user, _file, _default|
          user.bind opts[:socket] ? "unix://#{opts[:socket]}" : "tcp://#{opts[:bind]}:#{opts[:port]}?low_latency=true"
          user.threads threads, threads
          user.environment opts[:environment] || Boot.environment
          user.raise_exception_on_sigterm false # exit only once the drain is done
          user.tag "fastworker-sidecar"
          user.persistent_timeout PERSISTENT_TIMEOUT
          user.app app
          if cluster
            user.workers opts[:workers]
            user.preload_app!
            user.nakayoshi_fork true # GC and compact before forking: more pages stay shared
            user.worker_shutdown_timeout drain_timeout + Drain::HARD_STOP_GRACE + 5
            user.before_fork { Launcher.close_connections }
          end
        end
      end

      def parse(argv, env)
        sidekiq_args = (cut = argv.index("--")) ? argv.slice!(cut..)[1..] : []
        opts = {
          sidekiq_args: sidekiq_args,
          print_config: false,
          drain_timeout_given: !env["FASTWORKER_SIDECAR_DRAIN_TIMEOUT"].to_s.strip.empty?,
          rails_root: env["RAILS_ROOT"] || Dir.pwd,
          port: integer(env["PORT"], "PORT") || DEFAULT_PORT,
          bind: env["FASTWORKER_SIDECAR_BIND"] || "127.0.0.1",
          socket: env["FASTWORKER_SIDECAR_SOCKET"],
          threads: integer(env["FASTWORKER_SIDECAR_THREADS"], "FASTWORKER_SIDECAR_THREADS") || DEFAULT_THREADS,
          workers: integer(env["FASTWORKER_SIDECAR_WORKERS"], "FASTWORKER_SIDECAR_WORKERS") || 1,
          spare_threads: integer(env["FASTWORKER_SIDECAR_SPARE_THREADS"], "FASTWORKER_SIDECAR_SPARE_THREADS") || SPARE_THREADS,
          environment: env["RAILS_ENV"],
          drain_timeout: Sidecar.drain_timeout
        }
        parser(opts).parse!(argv)
        raise OptionParser::InvalidArgument, "unexpected arguments: #{argv.join(" ")}" unless argv.empty?

        opts[:rails_root] = File.expand_path(opts[:rails_root])
        validate!(opts)
        validate_door!(opts, env)
        opts
      end

      def parser(opts)
        OptionParser.new do |o|
          o.banner = "Usage: fastworker-sidecar --rails-root DIR [--port 3001] [--threads N] [--workers W] [--bind ADDR] [-- SIDEKIQ ARGS (-C FILE -q QUEUE,WEIGHT -c N ...)]"
          o.on("-r", "--rails-root DIR", "Rails app to boot (env RAILS_ROOT; default: current directory)") { |v| opts[:rails_root] = v }
          o.on("-p", "--port PORT", Integer, "TCP port (env PORT; default #{DEFAULT_PORT})") { |v| opts[:port] = v }
          o.on("-b", "--bind ADDR", "address to listen on (default 127.0.0.1)") { |v| opts[:bind] = v }
          o.on("--socket PATH", "listen on this Unix socket instead of TCP (env FASTWORKER_SIDECAR_SOCKET); the worker then uses --sidecar-url unix://PATH") { |v| opts[:socket] = v }
          o.on("-t", "--threads N", Integer, "jobs per process (env FASTWORKER_SIDECAR_THREADS; default #{DEFAULT_THREADS})") { |v| opts[:threads] = v }
          o.on("-w", "--workers W", Integer, "Puma worker processes (env FASTWORKER_SIDECAR_WORKERS; default 1)") { |v| opts[:workers] = v }
          o.on("-e", "--environment ENV", "RAILS_ENV (default: RAILS_ENV or development)") { |v| opts[:environment] = v }
          o.on("--drain-timeout SECONDS", Float, "on TERM, wait this long for running jobs (default: the workers' --timeout, else Sidekiq's timeout, 25)") do |v|
            opts[:drain_timeout] = v
            opts[:drain_timeout_given] = true
            opts[:drain_timeout_explicit] = true
          end
          o.on("--print-config", "boot the app, print Sidekiq's resolved server configuration as JSON and exit") { opts[:print_config] = true }
          o.on("-h", "--help", "show this help") do
            puts o
            exit 0
          end
        end
      end

      def validate!(opts)
        unless File.file?(File.join(opts[:rails_root], "config", "environment.rb"))
          raise OptionParser::InvalidArgument, "--rails-root #{opts[:rails_root]} has no config/environment.rb"
        end
        raise OptionParser::InvalidArgument, "--threads must be >= 1" unless opts[:threads] >= 1
        raise OptionParser::InvalidArgument, "--workers must be >= 1" unless opts[:workers] >= 1
        raise OptionParser::InvalidArgument, "--port must be 1..65535" unless (1..65_535).cover?(opts[:port])
        raise OptionParser::InvalidArgument, "--drain-timeout must be >= 0" unless opts[:drain_timeout] >= 0
        raise OptionParser::InvalidArgument, "FASTWORKER_SIDECAR_SPARE_THREADS must be >= 1" unless opts[:spare_threads] >= 1
      end

      def validate_door!(opts, env)
        Limits.from_env(env)
        return if Auth.load_secret(env) || Auth.loopback?(opts[:bind])

        raise OptionParser::InvalidArgument, "--bind #{opts[:bind]}: listening on a non-loopback address needs " \
          "#{Auth::SECRET_ENV} (or #{Auth::SECRET_FILE_ENV}), at least #{Auth::MIN_SECRET_BYTES} bytes, shared " \
          "with the worker; without it anyone who reaches the port can run code in the app"
      rescue Auth::SecretError, ArgumentError => e
        raise OptionParser::InvalidArgument, e.message
      end

      def integer(value, name)
        return nil if value.nil? || value.strip.empty?

        Integer(value, 10)
      rescue ArgumentError
        raise OptionParser::InvalidArgument, "#{name}=#{value.inspect} is not an integer"
      end
    end
  end
end
