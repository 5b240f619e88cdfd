# frozen_string_literal: true

# Raises what the first argument names.
class FailingJob
  include Sidekiq::Worker
  sidekiq_options retry: 7

  class MessageRaises < StandardError
    def message
      raise "no message for you"
    end
  end

  def perform(kind = "boom", size = 0)
    case kind
    when "long" then raise ArgumentError, "x" * size
    when "binary" then raise "bad bytes \xff\xfe end".b
    when "message_raises" then raise MessageRaises
    when "shutdown_cause" then shutdown_cause
    when "shutdown" then raise Sidekiq::Shutdown
    else raise kind
    end
  end

  private

  def shutdown_cause
    raise Sidekiq::Shutdown
  rescue Sidekiq::Shutdown
    raise "rolled back because of shutdown"
  end
end
