-- Matchmaking loads a user's cooldown partners at every join (user_a is covered by the primary key).
CREATE INDEX cooldowns_user_b ON cooldowns (user_b);
