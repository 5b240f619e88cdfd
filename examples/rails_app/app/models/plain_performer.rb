# frozen_string_literal: true

# Not a job: a plain class with a `perform` method. The sidecar must never instantiate it
# (tests/test_security.py checks that no "instantiated" event is ever recorded).
class PlainPerformer
  attr_accessor :jid

  def initialize
    JobEvent.create!(event: "instantiated", job_class: self.class.name)
  end

  def perform(*args)
    JobRun.create!(job_class: self.class.name, kind: "plain_performer", args_json: JSON.generate(args))
  end
end
