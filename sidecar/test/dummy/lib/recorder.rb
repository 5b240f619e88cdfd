# frozen_string_literal: true

# Recorder: what the dummy app's jobs, middleware and handlers saw, for the tests to read.
module Recorder
  LOCK = Mutex.new
  @data = Hash.new { |h, k| h[k] = [] }

  def self.add(kind, value)
    LOCK.synchronize { @data[kind] << value }
  end

  def self.[](kind)
    LOCK.synchronize { @data[kind].dup }
  end

  def self.reset!
    LOCK.synchronize { @data.clear }
  end
end
