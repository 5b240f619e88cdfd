# frozen_string_literal: true

class NoopJob < ActiveJob::Base
  def perform(*)
  end
end
