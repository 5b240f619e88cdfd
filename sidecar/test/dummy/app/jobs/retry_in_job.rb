# frozen_string_literal: true

# sidekiq_retry_in answers according to the exception message.
class RetryInJob
  include Sidekiq::Worker

  sidekiq_retry_in do |count, ex|
    Recorder.add(:retry_in_calls, count)
    case ex.message
    when "int" then 42
    when "float" then 7.9
    when "duration" then 2.minutes
    when "zero" then 0
    when "discard" then :discard
    when "kill" then :kill
    when "nil" then nil
    when "count" then count + 100
    when "text" then "600"
    when "words" then "soon"
    when "raise" then raise "retry_in exploded"
    end
  end

  def perform(message)
    raise message
  end
end
