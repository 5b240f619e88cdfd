# frozen_string_literal: true

# ActiveJob whose argument needs the custom MoneySerializer.
class MoneyJob < ApplicationJob
  def perform(money)
    JobRun.record!(self, kind: "money", args: [money.to_s],
                         details: {"class" => money.class.name, "cents" => money.cents, "currency" => money.currency})
  end
end
