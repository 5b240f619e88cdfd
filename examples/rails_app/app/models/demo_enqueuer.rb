# frozen_string_literal: true

# Enqueues demo jobs with the real Sidekiq client (and ActiveJob's Sidekiq adapter).
# Used by `bin/rails runner`, `rake demo:enqueue[kind,count]` and POST /enqueue.
# Returns the Sidekiq jids (for ActiveJob: provider_job_id, which is the jid).
class DemoEnqueuer
  KINDS = %w[noop plain model kwargs money flaky options retry_in exhausted slow retry_on aj_hooks unknown].freeze

  def self.enqueue(kind, count = 1, **opts)
    kind = kind.to_s
    raise ArgumentError, "unknown kind #{kind.inspect}; one of #{KINDS.join(", ")}" unless KINDS.include?(kind)

    Array.new(Integer(count)) { |i| new(opts).public_send("enqueue_#{kind}", i) }
  end

  def initialize(opts)
    @opts = opts.transform_keys(&:to_s)
  end

  def enqueue_noop(_i) = NoopWorker.perform_async
  def enqueue_plain(i) = PlainWorker.perform_async(@opts.fetch("label", "plain-#{i}"), i)

  def enqueue_model(i)
    widget = Widget.create!(name: @opts.fetch("name", "widget-#{i}"))
    WidgetJob.perform_later(widget).provider_job_id
  end

  def enqueue_kwargs(i) = KeywordJob.perform_later(name: @opts.fetch("name", "kw-#{i}"), count: i + 1).provider_job_id
  def enqueue_money(i) = MoneyJob.perform_later(Money.new(@opts.fetch("cents", 1234 + i), @opts.fetch("currency", "EUR"))).provider_job_id
  def enqueue_flaky(i) = FlakyWorker.perform_async("flaky-#{i}", Integer(@opts.fetch("failures", 2)))
  def enqueue_options(_i) = OptionsWorker.perform_async
  def enqueue_retry_in(_i) = RetryInWorker.perform_async(@opts.fetch("mode", "delay"))
  def enqueue_exhausted(_i) = ExhaustedWorker.perform_async
  def enqueue_slow(_i) = SlowWorker.perform_async(Float(@opts.fetch("seconds", 2)))
  def enqueue_retry_on(_i) = RetryOnJob.perform_later(@opts.fetch("mode", "flaky"), Integer(@opts.fetch("failures", 1))).provider_job_id
  def enqueue_aj_hooks(_i) = AjHooksJob.perform_later.provider_job_id
  def enqueue_unknown(_i) = Sidekiq::Client.push("class" => "NoSuchJob", "args" => [1])
end
