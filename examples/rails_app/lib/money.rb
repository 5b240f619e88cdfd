# frozen_string_literal: true

# A value object passed to a job as an argument: ActiveJob needs MoneySerializer for it.
class Money
  attr_reader :cents, :currency

  def initialize(cents, currency)
    @cents = Integer(cents)
    @currency = currency.to_s
  end

  def ==(other)
    other.is_a?(Money) && other.cents == cents && other.currency == currency
  end

  def to_s
    format("%.2f %s", cents / 100.0, currency)
  end
end
