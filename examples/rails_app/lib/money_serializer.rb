# frozen_string_literal: true

# A custom ActiveJob serializer (config.active_job.custom_serializers).
class MoneySerializer < ActiveJob::Serializers::ObjectSerializer
  def serialize?(argument)
    argument.is_a?(Money)
  end

  def serialize(money)
    super("cents" => money.cents, "currency" => money.currency)
  end

  def deserialize(hash)
    Money.new(hash["cents"], hash["currency"])
  end
end
