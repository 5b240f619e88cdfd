# frozen_string_literal: true

# sidekiq_retry_in decides the delay: an Integer for "delay" (10 s, 20 s, ...), :kill for
# "kill" (straight to the dead set), :discard for "discard" (dropped), a block error for
# "explode" (default formula).
class RetryInWorker
  include Sidekiq::Worker
  sidekiq_options retry: 3

  class Failure < StandardError; end

  sidekiq_retry_in do |count, exception|
    case exception.message
    when "kill" then :kill
    when "discard" then :discard
    when "explode" then raise "sidekiq_retry_in exploded"
    else 10 * (count + 1)
    end
  end

  def perform(mode)
    JobRun.record!(self, kind: "retry_in", args: [mode], status: "failed")
    raise Failure, mode
  end
end
