# frozen_string_literal: true

# ActiveJob with keyword arguments.
class KeywordJob < ApplicationJob
  def perform(name:, count: 1, tags: [])
    JobRun.record!(self, kind: "kwargs", args: [{"name" => name, "count" => count, "tags" => tags}],
                         details: {"name" => name, "count" => count, "tags" => tags})
  end
end
