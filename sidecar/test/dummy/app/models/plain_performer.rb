# frozen_string_literal: true

# Not a job: a plain class with a `perform` method (and a side effect on `new`), which the
# sidecar must never instantiate unless the app allows it by name.
class PlainPerformer
  attr_accessor :jid

  def initialize
    Recorder.add(:plain_new, true)
  end

  def perform(*args)
    Recorder.add(:plain_perform, args)
  end
end
