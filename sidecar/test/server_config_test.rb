# frozen_string_literal: true

require_relative "helper"
require "tmpdir"
require "fileutils"
require "open3"

# ServerConfig through the real executable: `fastworker-sidecar --print-config` boots a copy of
# the dummy app and prints what Sidekiq's own CLI code and the app's configure_server made of
# config/sidekiq.yml, the arguments after `--` and Ruby settings.
class ServerConfigTest < Minitest::Test
  BIN = File.expand_path("../bin/fastworker-sidecar", __dir__)

  YAML_TEXT = <<~YML
    :concurrency: 4
    :timeout: <%= 3 + 4 %>
    :queues:
      - [critical, 3]
      - default
    production:
      :tag: prod-tag
  YML

  RUBY_SETTINGS = <<~RUBY
    Sidekiq.configure_server do |config|
      next unless ENV["DUMMY_RUBY_SETTINGS"]
      config.options[:max_retries] = 7
      config.options[:dead_max_jobs] = 99
      config.options[:dead_timeout_in_seconds] = 3600
      config.options[:labels] = ["from-ruby"]
      config.redis = {url: "redis://:s3cret@127.0.0.1:6390/3"}
    end
  RUBY

  def app(yaml: YAML_TEXT, yaml_name: "sidekiq.yml")
    dir = Dir.mktmpdir("fw-app")
    root = File.join(dir, "myapp")
    FileUtils.cp_r(DUMMY_ROOT, root)
    File.write(File.join(root, "config", yaml_name), yaml) if yaml
    File.write(File.join(root, "config", "initializers", "zz_settings.rb"), RUBY_SETTINGS)
    root
  end

  def print_config(root, *args, env: {})
    out, err, status = Open3.capture3({"RAILS_ENV" => nil, "RACK_ENV" => nil, "APP_ENV" => nil, "REDIS_URL" => nil, "RAILS_MAX_THREADS" => nil}.merge(env),
      RbConfig.ruby, BIN, "--rails-root", root, "--print-config", *args)
    assert status.success?, "exit #{status.exitstatus}: #{err}#{out}"
    JSON.parse(out.lines.last)
  end

  def test_yaml_is_found_and_read_by_sidekiqs_cli
    cfg = print_config(app(yaml_name: "sidekiq.yml.erb"), env: {"RAILS_ENV" => "production"})
    assert_equal [["critical", 3], ["default", 1]], cfg["queues"]
    assert_equal 4, cfg["concurrency"]
    assert_equal 7, cfg["timeout"]
    assert_equal "prod-tag", cfg["tag"]
    assert_equal "production", cfg["environment"]
    assert_equal ::Sidekiq::VERSION, cfg["sidekiq_version"]
    assert_equal 4 + 5, cfg["redis_pool_size"], "6.4.1 sizes its server pool from the resolved concurrency"
  end

  def test_tag_defaults_to_the_app_folder_and_strict_queues
    cfg = print_config(app(yaml: ":queues:\n  - a\n  - b\n"))
    assert_equal "myapp", cfg["tag"]
    assert_equal [["a", 0], ["b", 0]], cfg["queues"]
    assert_equal 10, cfg["concurrency"]
    assert_equal "development", cfg["environment"]
  end

  def test_arguments_after_double_dash_are_sidekiq_cli_arguments
    cfg = print_config(app, "--", "-q", "hot,2", "-q", "cold", "-c", "6", "-g", "cli-tag", "-e", "production")
    assert_equal [["hot", 2], ["cold", 1]], cfg["queues"]
    assert_equal 6, cfg["concurrency"]
    assert_equal "cli-tag", cfg["tag"]
    assert_equal 7, cfg["timeout"]
  end

  def test_ruby_settings_take_effect
    cfg = print_config(app, env: {"DUMMY_RUBY_SETTINGS" => "1"})
    assert_equal 7, cfg["max_retries"]
    assert_equal 99, cfg["dead_max_jobs"]
    assert_equal 3600, cfg["dead_timeout_in_seconds"]
    assert_equal ["from-ruby"], cfg["labels"]
    assert_equal "redis://:s3cret@127.0.0.1:6390/3", cfg["redis_url"]
  end

  def test_redis_url_from_the_environment_when_ruby_sets_none
    cfg = print_config(app, env: {"REDIS_URL" => "redis://127.0.0.1:6391/2"})
    assert_equal "redis://127.0.0.1:6391/2", cfg["redis_url"]
    assert_nil cfg["namespace"]
  end

  def test_a_queue_given_twice_is_refused_by_sidekiq
    _out, err, status = Open3.capture3(RbConfig.ruby, BIN, "--rails-root", app, "--print-config", "--", "-q", "a", "-q", "a")
    assert_equal 64, status.exitstatus
    assert_match(/queues: a cannot be defined twice/, err)
  end
end
