# frozen_string_literal: true

class AjRetryOnJob < ApplicationJob
  class Flaky < StandardError; end
  class Hopeless < StandardError; end

  retry_on Flaky, wait: 5.seconds, attempts: 3
  discard_on Hopeless

  def perform(kind)
    Recorder.add(:retry_on, executions)
    raise Flaky, "try again" if kind == "flaky"
    raise Hopeless, "give up" if kind == "hopeless"
  end
end
