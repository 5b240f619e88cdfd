# frozen_string_literal: true

# A model passed to WidgetJob as a GlobalID argument.
class Widget < ApplicationRecord
  validates :name, presence: true
end
